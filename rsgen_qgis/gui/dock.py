"""The "Satellite image generation" dock: collects a request on the main thread, hands it to a GenerationTask.

Kept thin on purpose: extents come from gis.extent, the grid and GSD from the engine (gis.extent.fit_grid, so the
numbers shown are exactly what Generate produces), the run from gis.task, the layer from gis.layers.
Mistakes are shown inline (size/GSD) or in QGIS's message bar, never as a traceback.
Generate, Cancel, the progress bar and the status lines sit below the scroll area, always in view; the model's
pixel-size range is shown beside the pixel size, and what would disappoint (outside that range, a tiny image) is
said before Generate. In a CRS in degrees the pixel size is proposed from metres as the view changes, until the
user sets one. The large-area estimate runs as a task of its own as soon as Large area is ticked.
"""
from __future__ import annotations

import os
import random
from typing import List, Optional

import numpy as np

from qgis.core import (Qgis, QgsApplication, QgsMapLayerProxyModel, QgsProcessingUtils, QgsProject,
                       QgsVectorLayer)
from qgis.gui import QgsCollapsibleGroupBox, QgsDockWidget, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QKeySequence
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QGroupBox, QLabel, QMenu, QPlainTextEdit, QProgressBar,
                                 QPushButton, QScrollArea, QToolButton, QVBoxLayout, QWidget)

try:
    from qgis.PyQt.QtGui import QShortcut  # Qt 6 (QGIS 4)
except ImportError:
    from qgis.PyQt.QtWidgets import QShortcut  # Qt 5 (QGIS 3)

from .. import settings
from ..core.errors import ExtentError, ModelPackageError, OutputError, RsgenError
from ..core.geo.georef import grid_for_request, gsd_metres_mean
from ..core.recall import Recorded, model_change_note
from ..core.request import DEFAULT_MODEL, MAX_AUTOGUIDANCE, MAX_CLASS_GUIDANCE, Conditions, GenerationRequest
from ..gis.extent import (Extent, RectangleMapTool, canvas_extent, crs_from_text, describe_crs, extent_in, fit_grid,
                          from_rectangle, grid_and_gsd, layer_extent, unit_suffix)
from ..gis.layers import layer_name, layers_using_file, source_layer_name
from ..gis.task import EstimateTask, GenerationTask
from .conditions import ConditionsPanel
from .models_menu import ModelMenu
from . import (ERROR_STYLE, GUIDANCE_SPIN_RANGE, autoguidance_hint, class_guidance_hint, dspin, duration, form,
               guidance_limits, metres, model_choices, narrow, precision_labels, provider_text, row, sampler_hints,
               sampler_labels, set_quiet, spin, tr, wrap_label)

TITLE = "Satellite image generation"
SOURCES = (("canvas", "Map canvas"), ("layer", "Layer extent"), ("drawn", "Drawn rectangle"))
# request fields the dock always leaves at their defaults: a recalled image that set them is told about
DOCK_LACKS = {"date": None, "cascade": 0, "block_windows": None}
DEFAULT_LONG_SIDE = 512  # pixels, for a first pixel size when the saved one does not fit the CRS units
WARNING_STYLE = "color: #b35900;"


def same_grid(grid, recorded: dict) -> bool:
    """Whether the dock's grid is the one a recorded request asks for (same size and transform)."""
    try:
        want = grid_for_request(GenerationRequest.from_dict({**recorded, "output": "recalled.tif"}))
    except RsgenError:
        return False
    return grid is not None and (grid.width, grid.height) == (want.width, want.height) and all(
        abs(a - b) <= 1e-9 * max(1.0, abs(b)) for a, b in zip(grid.transform, want.transform))


def prompt_reading(path: str) -> str:
    """The generated GeoTIFF's prompt_reading tag ('' when it has none or cannot be read)."""
    from ..core.geo.geotiff import IO_ERRORS, read_tags

    try:
        return read_tags(path).get("prompt_reading", "")
    except IO_ERRORS:
        return ""


class GenerationDock(QgsDockWidget):
    def __init__(self, iface, parent: Optional[QWidget] = None):
        super().__init__(tr(TITLE), parent)
        self.setObjectName("RsgenGenerationDock")
        self.iface, self.canvas = iface, iface.mapCanvas()
        self.task: Optional[GenerationTask] = None
        self._queue: List[GenerationRequest] = []  # variants (Images > 1) still to run, one after the other
        self._done: List[str] = []  # names of the layers this run added so far
        self._providers: List[str] = []
        self.grid = None  # engine Grid for the current settings, None while they are invalid
        self.drawn_rect = None
        self._manifests = {}  # model id -> manifest, for the controls that depend on the model
        self._model_sha = {}  # model id -> denoiser sha256, to tell when a recalled image's model has changed
        self.size_mode = "gsd"  # which of gsd / width / height the user set last: kept when the extent changes
        self._units: Optional[str] = None
        self._auto_gsd = False  # the pixel size follows the view (proposed from metres) until the user sets one
        self._estimate_key = None  # what the shown large-area estimate is for
        self._estimate_task: Optional[EstimateTask] = None
        self._estimate_text = ""
        self._source = None  # (what a raster mode did, the raster's name) for the layers' names
        self._descriptions = set()  # our tasks' descriptions: QGIS's "Task failed/complete" banners naming them go
        self._previous_tool = None  # the map tool to give back after drawing a rectangle
        self._watched = None  # the vector layer whose selection the extent follows
        self.tool = RectangleMapTool(self.canvas)
        self.tool.rectangleDrawn.connect(self._on_drawn)
        self.tool.deactivated.connect(lambda: self.draw_btn.setChecked(False))
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)  # pans and keystrokes come in bursts; compute once they settle
        self._timer.timeout.connect(self.update_size)
        self._build()
        self._restore()
        project = QgsProject.instance()
        project.layersAdded.connect(self._update_hint)
        project.layersRemoved.connect(self._update_hint)
        self.canvas.extentsChanged.connect(self._schedule)
        self.canvas.destinationCrsChanged.connect(self._on_crs_changed)
        self.refresh_models()
        if not settings.has_last("steps"):  # a fresh profile: the chosen model's own steps, guidance and sampler
            self._apply_model_defaults()
        self.show_provider()
        self.update_size()
        self._update_hint()

    # -- layout --------------------------------------------------------------------------------------------
    def _build(self) -> None:
        area = QGroupBox(tr("Area"))
        af = form(area)
        self.source_combo = narrow(QComboBox())
        for key, label in SOURCES:
            self.source_combo.addItem(tr(label), key)
        self.draw_btn = QToolButton()
        self.draw_btn.setIcon(QgsApplication.getThemeIcon("/mActionSelectRectangle.svg"))
        self.draw_btn.setToolTip(tr("Draw a rectangle on the map"))
        self.draw_btn.setCheckable(True)
        af.addRow(tr("Extent"), row(self.source_combo, self.draw_btn, stretch=(1,)))
        self.layer_combo = narrow(QgsMapLayerComboBox())
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.HasGeometry | QgsMapLayerProxyModel.Filter.RasterLayer)
        af.addRow(tr("Layer"), self.layer_combo)
        self.selected_check = QCheckBox(tr("Selected features only"))
        self.selected_check.setToolTip(tr("The extent of the layer's selected features instead of the whole layer "
                                          "(vector layers)"))
        af.addRow("", self.selected_check)
        self.crs_label = wrap_label()
        af.addRow(tr("CRS"), self.crs_label)
        self.gsd_spin = dspin(1e-9, 1e7, 4.0, 3, 1.0)
        self.suggest_btn = QToolButton()
        self.suggest_btn.setText(tr("Suggest"))
        self.suggest_btn.setToolTip(tr("A pixel size for this view within the model's range (in a CRS in degrees: "
                                       "converted from metres at this latitude); it then follows the view until "
                                       "you set one"))
        af.addRow(tr("Pixel size"), row(self.gsd_spin, self.suggest_btn, stretch=(1,)))
        self.gsd_range_label = wrap_label()
        self.gsd_range_label.setToolTip(tr("The pixel sizes the model was trained on: outside them its images are "
                                           "less realistic"))
        af.addRow("", self.gsd_range_label)
        self.width_spin, self.height_spin = spin(1, 100000, 512, " px"), spin(1, 100000, 512, " px")
        af.addRow(tr("Size"), row(self.width_spin, QLabel("×"), self.height_spin, stretch=(1, 0, 1)))
        self.size_label = wrap_label()
        af.addRow(tr("Result"), self.size_label)
        self.gsd_warning = wrap_label()
        self.gsd_warning.setStyleSheet(WARNING_STYLE)
        self.gsd_warning.setVisible(False)
        af.addRow(self.gsd_warning)
        self.large_check = QCheckBox(tr("Large area"))
        self.large_check.setToolTip(tr("No pixel budget: the area is generated in world-anchored blocks of "
                                       "overlapping windows, written to disk as they are done (memory stays "
                                       "flat); the number of windows and an estimated time are shown first"))
        af.addRow("", self.large_check)
        self.estimate_label = wrap_label()
        self.estimate_label.setVisible(False)
        af.addRow(self.estimate_label)

        image = QGroupBox(tr("Image"))
        imf = form(image)
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText(tr("e.g. dense residential area with trees beside a river"))
        self.prompt_edit.setFixedHeight(self.fontMetrics().lineSpacing() * 3 + 14)
        self.recent_btn = QToolButton()
        self.recent_btn.setText(tr("Recent"))
        self.recent_btn.setToolTip(tr("Prompts you generated with last"))
        self.recent_btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.recent_menu = QMenu(self.recent_btn)
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self.recent_btn.setMenu(self.recent_menu)
        imf.addRow(row(QLabel(tr("Prompt")), QWidget(), self.recent_btn, stretch=(0, 1, 0)))
        imf.addRow(self.prompt_edit)  # full width: prompts are sentences and docks are narrow
        # a prompt alone gives a generic texture: say so, and offer the loaded layers a layout would follow
        self.layout_hint = wrap_label()
        self.use_layers_btn = QPushButton(tr("Use them"))
        self.use_layers_btn.setToolTip(tr("Switch on Conditions > Layout from vector layers with these layers"))
        self._hint_box = QWidget()
        hl = QVBoxLayout(self._hint_box)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(self.layout_hint)
        hl.addWidget(row(QWidget(), self.use_layers_btn, stretch=(1, 0)))
        imf.addRow(self._hint_box)
        self.generate_shortcut = QShortcut(QKeySequence("Ctrl+Return"), self.prompt_edit)
        self.generate_shortcut.setContext(Qt.ShortcutContext.WidgetShortcut)
        self.generate_shortcut.activated.connect(lambda: self.generate_btn.isEnabled() and self.generate())
        self.model_combo = narrow(QComboBox())
        self.add_models_btn = QToolButton()
        self.add_models_btn.setText("…")
        self.add_models_btn.setToolTip(tr("Add a folder with model packages, or install a model package zip"))
        self.add_models_btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.models_menu = ModelMenu(self.add_models_btn,
                                     lambda: self.model_combo.currentData(Qt.ItemDataRole.ToolTipRole),
                                     self._models_changed, self._message)
        self.add_models_btn.setMenu(self.models_menu)
        imf.addRow(tr("Model"), row(self.model_combo, self.add_models_btn, stretch=(1,)))
        self.model_hint = wrap_label()
        self.model_hint.setStyleSheet(ERROR_STYLE)
        imf.addRow(self.model_hint)
        self.seed_spin = spin(0, 2**31 - 1, 0)
        self.random_btn = QPushButton(tr("Random"))
        imf.addRow(tr("Seed"), row(self.seed_spin, self.random_btn, stretch=(1,)))
        self.count_spin = spin(1, 16, 1)
        self.count_spin.setToolTip(tr("How many images to make, one after the other, with the seeds Seed, "
                                      "Seed + 1, …: each is its own layer (an Output file gets _seed<N> before "
                                      ".tif)"))
        imf.addRow(tr("Images"), self.count_spin)
        self.steps_spin = spin(1, 1000, 20)
        imf.addRow(tr("Steps"), self.steps_spin)
        self.guidance_spin = dspin(*GUIDANCE_SPIN_RANGE, 3.0, 1, 0.5)
        self.guidance_spin.setToolTip(guidance_limits({})[2])
        imf.addRow(tr("Guidance"), self.guidance_spin)
        self.class_spin = dspin(0.0, MAX_CLASS_GUIDANCE, 0.0, 1, 0.5)
        self.class_spin.setSpecialValueText(tr("Off"))
        self._class_from_model = False  # True until the user generated with a value: the chosen model's default
        imf.addRow(tr("Class guidance"), self.class_spin)
        self.auto_spin = dspin(1.0, MAX_AUTOGUIDANCE, 1.0, 1, 0.5)
        self.auto_spin.setSpecialValueText(tr("Off"))
        self._auto_from_model = True  # as _class_from_model: the chosen model's default until the user's own
        imf.addRow(tr("Autoguidance"), self.auto_spin)
        self.sampler_combo = narrow(QComboBox())
        hints = sampler_hints()
        for key, label in sampler_labels().items():
            self.sampler_combo.addItem(label, key)
            if key in hints:
                self.sampler_combo.setItemData(self.sampler_combo.count() - 1, tr(hints[key]),
                                               Qt.ItemDataRole.ToolTipRole)
        imf.addRow(tr("Sampler"), self.sampler_combo)
        self.precision_combo = narrow(QComboBox())
        for key, label in precision_labels().items():
            self.precision_combo.addItem(label, key)
        self.precision_combo.setToolTip(tr("Fast: the model's int8 graph on the CPU (fp16 on a GPU) where the "
                                           "package has one - faster, images close to the exact graph's but "
                                           "not identical. Exact: the fp32 graph everywhere."))
        imf.addRow(tr("Precision"), self.precision_combo)
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output_widget.setFilter("GeoTIFF (*.tif *.tiff)")
        self.output_widget.lineEdit().setPlaceholderText(tr("[Temporary file]"))
        imf.addRow(tr("Output file"), self.output_widget)

        self.conditions = ConditionsPanel(lambda: self.grid, self._message)
        conditions = QgsCollapsibleGroupBox(tr("Conditions"))
        conditions.setObjectName("RsgenConditions")
        cl = QVBoxLayout(conditions)
        cl.setContentsMargins(4, 4, 4, 4)  # nested groups in a narrow dock: keep the margins small
        cl.addWidget(self.conditions)

        self.generate_btn = QPushButton(tr("Generate"))
        self.generate_btn.setDefault(True)
        self.generate_btn.setToolTip(tr("Generate (Ctrl+Enter in the prompt)"))
        self.cancel_btn = QPushButton(tr("Cancel"))
        self.cancel_btn.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status_label = wrap_label()
        self.provider_label = wrap_label()

        body = QWidget()
        lay = QVBoxLayout(body)
        for w in (area, image, conditions):
            lay.addWidget(w)
        lay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(body)
        # Generate, Cancel, progress and status below the scroll area: in view on any screen, whatever is open
        footer = QWidget()
        fl = QVBoxLayout(footer)
        fl.setContentsMargins(9, 4, 9, 6)
        fl.addWidget(row(self.generate_btn, self.cancel_btn, stretch=(1, 1)))
        for w in (self.progress, self.status_label, self.provider_label):
            fl.addWidget(w)
        main = QWidget()
        ml = QVBoxLayout(main)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.setSpacing(0)
        ml.addWidget(scroll, 1)
        ml.addWidget(footer)
        self.setWidget(main)

        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self.draw_btn.toggled.connect(self._on_draw_toggled)
        self.layer_combo.layerChanged.connect(self._watch_selection)
        self.selected_check.toggled.connect(lambda _: self._schedule())
        self._watch_selection(self.layer_combo.currentLayer())
        self.gsd_spin.valueChanged.connect(lambda _: self._edited("gsd"))
        self.width_spin.valueChanged.connect(lambda _: self._edited("width"))
        self.height_spin.valueChanged.connect(lambda _: self._edited("height"))
        self.large_check.toggled.connect(lambda _: self.update_size())
        self.suggest_btn.clicked.connect(self._suggest)
        self.use_layers_btn.clicked.connect(self._use_suggested)
        self.conditions.layout_group.toggled.connect(lambda _: self._update_hint())
        c = self.conditions
        for signal in (c.raster_group.toggled, c.mode_combo.currentIndexChanged, c.raster_combo.layerChanged,
                       self.steps_spin.valueChanged, self.guidance_spin.valueChanged,
                       self.precision_combo.currentIndexChanged, self.sampler_combo.currentIndexChanged,
                       c.layout_group.toggled):
            signal.connect(self._schedule)
        self.prompt_edit.textChanged.connect(lambda: self.large_check.isChecked() and self._schedule())
        self.random_btn.clicked.connect(lambda: self.seed_spin.setValue(random.randrange(2**31 - 1)))
        self.model_combo.currentIndexChanged.connect(lambda _: self._on_model_changed())
        self.model_combo.activated.connect(lambda _: self._apply_model_defaults())  # the user's choice only
        self.generate_btn.clicked.connect(self.generate)
        self.conditions.raster_group.toggled.connect(lambda _: self._update_buttons())
        self.cancel_btn.clicked.connect(self.cancel)

    def _restore(self) -> None:
        self.prompt_edit.setPlainText(settings.last("prompt"))
        self.seed_spin.setValue(min(settings.last("seed"), 2**31 - 1))
        self.steps_spin.setValue(settings.last("steps"))
        self.guidance_spin.setValue(settings.last("guidance"))
        cg = settings.last("class_guidance")
        self._class_from_model = cg < 0
        self.class_spin.setValue(max(cg, 0.0))
        ag = settings.last("autoguidance")
        self._auto_from_model = ag < 0
        self.auto_spin.setValue(max(ag, 1.0))
        i = self.sampler_combo.findData(settings.last("sampler"))
        self.sampler_combo.setCurrentIndex(max(i, 0))
        i = self.precision_combo.findData(settings.last("precision"))
        self.precision_combo.setCurrentIndex(max(i, 0))
        self._source_changed_ui()

    # -- extent, size and GSD ------------------------------------------------------------------------------
    def current_extent(self) -> Extent:
        """The extent to generate, in the map's CRS (raises ExtentError/CrsError with a user message)."""
        source = self.source_combo.currentData()
        crs = self.canvas.mapSettings().destinationCrs()
        if source == "layer":
            return layer_extent(self.layer_combo.currentLayer(), crs,
                                selected_only=self.selected_check.isChecked() and self.selected_check.isEnabled())
        if source == "drawn":
            if self.drawn_rect is None:
                raise ExtentError(tr("Draw a rectangle on the map first (rectangle button next to Extent)."))
            return from_rectangle(self.drawn_rect, crs)
        return canvas_extent(self.canvas)[0]

    def _schedule(self, *_) -> None:
        self._timer.start()

    def _edited(self, which: str) -> None:
        self.size_mode = which
        self._auto_gsd = False  # the user's own pixel size (or width/height) is kept from now on
        self._schedule()

    def gsd_range(self) -> Optional[tuple]:
        """(lo, hi) metres: the pixel sizes the chosen model was trained on (its manifest), or None."""
        manifest = self._manifests.get(self.model_combo.currentData(), {})
        rng = (manifest.get("training") or {}).get("gsd_range_m")
        try:
            lo, hi = float(rng[0]), float(rng[1])
        except (TypeError, ValueError, IndexError, KeyError):
            return None
        return (lo, hi) if 0 < lo <= hi else None

    def proposed_gsd(self, ext: Extent) -> float:
        """A pixel size in the CRS's units for this extent: about DEFAULT_LONG_SIDE pixels on the long side, held
        to the model's range in metres (measured on the ellipsoid, so degrees work), and within the pixel budget
        unless Large area is ticked."""
        probe = max(ext.size) / DEFAULT_LONG_SIDE
        _, probe_m = grid_and_gsd(ext, gsd=probe, pixel_budget=2**62)
        target_m = probe_m
        rng = self.gsd_range()
        if rng:
            target_m = min(max(target_m, rng[0]), rng[1])
        gsd = probe * target_m / probe_m
        pixels = (ext.size[0] / gsd) * (ext.size[1] / gsd)
        budget = settings.pixel_budget()
        if not self.large_check.isChecked() and pixels > budget:
            gsd *= (pixels / budget) ** 0.5 * 1.001
            # the grid snaps to whole pixels anchored to the world (a row or column more than extent / gsd) and the
            # control rounds to its decimals: coarsen until the grid Generate would make fits (a 4 m model's
            # proposal on a zoomed-out view in degrees came out 0.08 % over the budget)
            for _ in range(20):
                try:
                    grid = grid_and_gsd(ext, gsd=round(gsd, self.gsd_spin.decimals()), pixel_budget=2**62)[0]
                except RsgenError:
                    break
                if grid.width * grid.height <= budget:
                    break
                gsd *= (grid.width * grid.height / budget) ** 0.5 * 1.001
        return gsd

    def _suggest(self) -> None:
        self._auto_gsd = True
        self.update_size()

    def update_size(self) -> None:
        """Recompute the grid for the current extent and the last-edited of pixel size / width / height, and say
        before Generate what would disappoint: a pixel size outside the model's range, a tiny image."""
        self._timer.stop()
        self.grid = None
        crs = self.canvas.mapSettings().destinationCrs()
        self.crs_label.setText(describe_crs(crs))
        units = unit_suffix(crs)
        warnings: List[str] = []
        try:
            ext = self.current_extent()
            if units != self._units:  # first time, or the map CRS changed units: a fresh, sensible pixel size
                self._units = units
                self.gsd_spin.setSuffix(f" {units}")
                self.gsd_spin.setDecimals(8 if units == "deg" else 3)
                self._auto_gsd = units != "m"  # degrees, feet: proposed from metres as the view changes
                set_quiet(self.gsd_spin, settings.last("gsd_m") if units == "m" else max(ext.size) / DEFAULT_LONG_SIDE)
                self.size_mode = "gsd"
            if self._auto_gsd:
                set_quiet(self.gsd_spin, self.proposed_gsd(ext))
                self.size_mode = "gsd"
            grid, gsd_m = fit_grid(ext, self.size_mode, self.gsd_spin.value(), self.width_spin.value(),
                                   self.height_spin.value(), settings.pixel_budget(), self.large_check.isChecked())
            if self.size_mode != "gsd":
                set_quiet(self.gsd_spin, grid.pixel_size[0])
            set_quiet(self.width_spin, grid.width)
            set_quiet(self.height_spin, grid.height)
            self.grid = grid
            self.size_label.setStyleSheet("")
            self.size_label.setText(tr("{w} × {h} px, GSD {g} on the ground").format(
                w=grid.width, h=grid.height, g=metres(gsd_m)))
            if not self.conditions.raster_mode():
                warnings += self._grid_warnings(grid.width, grid.height, gsd_m)
        except RsgenError as exc:
            self.size_label.setStyleSheet(ERROR_STYLE)
            self.size_label.setText(str(exc))
        if self.conditions.raster_mode():
            warnings = self._raster_plan_text(crs)
        self.gsd_warning.setText("\n".join(warnings))
        self.gsd_warning.setVisible(bool(warnings))
        self._schedule_estimate()
        self._update_buttons()

    def _grid_warnings(self, width: int, height: int, gsd_m: float, tiny: bool = True) -> List[str]:
        out = []
        rng = self.gsd_range()
        if rng and not rng[0] * 0.999 <= gsd_m <= rng[1] * 1.001:
            out.append(tr("{g} is outside the pixel sizes {model} was trained on ({lo:g}–{hi:g} m): expect a less "
                          "realistic image.").format(g=metres(gsd_m), model=self.model_combo.currentText(),
                                                     lo=rng[0], hi=rng[1]))
        tile = int((self._manifests.get(self.model_combo.currentData(), {}).get("tile") or {}).get("size", 64))
        if tiny and min(width, height) < tile:  # narrower than one of the model's windows: a 12 x 11 px image
            out.append(tr("Only {w} × {h} px: zoom out, or press Suggest for a pixel size that fits this view.").format(
                w=width, h=height))
        return out

    def _raster_plan_text(self, crs) -> List[str]:
        """The Result line in a raster mode: the part of the raster worked on and the output; its warnings."""
        try:
            layer, window, out = self.conditions.raster_plan(self.current_extent(), crs)
            gsd_m = gsd_metres_mean(out)
        except RsgenError as exc:
            self.size_label.setStyleSheet(ERROR_STYLE)
            self.size_label.setText(str(exc))
            return []
        self.size_label.setStyleSheet("")
        self.size_label.setText(tr("{w} × {h} px from “{name}” ({ww} × {wh} px of it), GSD {g} on the ground").format(
            w=out.width, h=out.height, name=layer.name(), ww=window.width, wh=window.height, g=metres(gsd_m)))
        warnings = self._grid_warnings(out.width, out.height, gsd_m, tiny=False)
        if out.width * out.height > settings.pixel_budget() and not self.large_check.isChecked() and \
                self.conditions.raster_mode() != "inpaint":  # inpainting keeps to the polygons: known at Generate
            warnings.append(tr("More than the {n:,} px of one generation: tick Large area, or draw a smaller "
                               "rectangle on the raster.").format(n=settings.pixel_budget()))
        return warnings

    # -- large-area estimate (a task: loading the model and timing a batch take seconds) ------------------------
    def _estimate_request(self) -> Optional[GenerationRequest]:
        g, model = self.grid, self.model_combo.currentData()
        if not self.large_check.isChecked() or g is None or not model or self.conditions.raster_mode():
            return None
        layout = self.conditions.layout_group.isChecked()
        return GenerationRequest(
            extent=g.bounds, crs=g.crs_wkt, output="", width=g.width, height=g.height, large_area=True,
            prompt=self.prompt_edit.toPlainText().strip(), steps=self.steps_spin.value(),
            guidance=self.guidance_spin.value(), sampler=self.sampler_combo.currentData(), model=model,
            precision=self.precision_combo.currentData(),
            # only whether there is a layout changes the cost (guidance doubles the evaluations): a stand-in
            conditions=Conditions(layout=np.zeros((1, 1), np.uint8)) if layout else Conditions())

    def _schedule_estimate(self) -> None:
        req = self._estimate_request()
        if req is None:
            self._estimate_key, self._estimate_text = None, ""
            self.estimate_label.setVisible(False)
            return
        key = req.to_json()
        self.estimate_label.setVisible(True)
        if key == self._estimate_key:
            return
        self._estimate_key, self._estimate_text = key, ""
        self.estimate_label.setText(tr("Large area: estimating the time…"))
        if self._estimate_task is not None:  # one at a time: when it ends, the newest settings are estimated
            return
        try:
            from ..core.runtime.providers import choose

            providers = choose(settings.provider_preference())
        except (ImportError, RsgenError) as exc:
            self.estimate_label.setText(str(exc))
            return
        task = EstimateTask(req, settings.model_dirs(), providers,
                            lambda n, v, k=key, steps=req.steps: self._estimated(k, steps, n, v))
        self._descriptions.add(task.description())
        self._estimate_task = task
        QgsApplication.taskManager().addTask(task)

    def _estimated(self, key: str, steps: int, n: Optional[int], value) -> None:
        self._estimate_task = None
        if sip.isdeleted(self.estimate_label):
            return
        QTimer.singleShot(0, self._drop_task_banners)
        if key != self._estimate_key:  # the settings changed meanwhile
            self._estimate_key = None
            self._schedule_estimate()
            return
        if n is None:
            self.estimate_label.setText(tr("Large area: no estimate ({why}).").format(why=value))
            return
        # in the units the progress then counts: "Window 144/6480" is 144 of n x steps window evaluations
        self._estimate_text = tr("Large area: {total:,} windows to run ({n:,} × {steps} steps), about {t} "
                                 "(estimate).").format(total=n * steps, n=n, steps=steps, t=duration(value))
        self.estimate_label.setText(self._estimate_text)

    def _on_source_changed(self, *_) -> None:
        self._source_changed_ui()
        if self.source_combo.currentData() == "drawn" and self.drawn_rect is None:
            self.draw_btn.setChecked(True)
        self.update_size()

    def _source_changed_ui(self) -> None:
        source = self.source_combo.currentData()
        self.layer_combo.setEnabled(source == "layer")
        vector = isinstance(self.layer_combo.currentLayer(), QgsVectorLayer)
        self.selected_check.setEnabled(source == "layer" and vector)
        self.tool.show_rectangle(self.drawn_rect if source == "drawn" else None)

    def _watch_selection(self, layer=None) -> None:
        """Follow the chosen layer's selection, so the size shown is that of the selected features' extent."""
        old = self._watched
        if old is not None and not sip.isdeleted(old):
            try:
                old.selectionChanged.disconnect(self._on_selection_changed)
            except TypeError:
                pass
        self._watched = layer if isinstance(layer, QgsVectorLayer) else None
        if self._watched is not None:
            self._watched.selectionChanged.connect(self._on_selection_changed)
        self._source_changed_ui()
        self._schedule()

    def _on_selection_changed(self, *_) -> None:
        if self.selected_check.isChecked():
            self._schedule()

    def _on_draw_toggled(self, on: bool) -> None:
        if on:
            self._previous_tool = self.canvas.mapTool()
            self.canvas.setMapTool(self.tool)
        elif self.canvas.mapTool() is self.tool:
            self.canvas.unsetMapTool(self.tool)
            if self._previous_tool is not None and not sip.isdeleted(self._previous_tool):
                self.canvas.setMapTool(self._previous_tool)

    def _on_drawn(self, rect) -> None:
        self.drawn_rect = rect
        self.draw_btn.setChecked(False)
        self.source_combo.setCurrentIndex(self.source_combo.findData("drawn"))
        self._source_changed_ui()
        self.update_size()

    def _on_crs_changed(self) -> None:
        self.drawn_rect = None  # drawn in the old CRS's coordinates: no longer meaningful
        self._source_changed_ui()
        self._schedule()

    # -- the guide to Conditions ----------------------------------------------------------------------------
    def _update_hint(self, *_) -> None:
        """A prompt alone gives a generic scene, not this place: while no layout is on, say so and offer the loaded
        layers that the layout rules read (roads, buildings...)."""
        if sip.isdeleted(self.layout_hint):
            return
        if self.conditions.layout_group.isChecked():
            self._hint_box.setVisible(False)
            return
        layers = self.conditions.suggested_layers()
        if layers:
            self.layout_hint.setText(tr("{names}: a layout from these layers makes the image follow the place (a "
                                        "prompt alone gives a generic scene, not this place).").format(
                names=", ".join(lyr.name() for lyr in layers)))
        else:
            self.layout_hint.setText(tr("A prompt alone gives a generic scene, not this place. Load roads and "
                                        "buildings (e.g. OpenStreetMap) and tick them under Conditions: the image "
                                        "then follows the place."))
        self.use_layers_btn.setVisible(bool(layers))
        self._hint_box.setVisible(True)

    def _use_suggested(self) -> None:
        layers = self.conditions.suggested_layers()
        self.conditions.refresh_layers()
        self.conditions.tick(*layers)
        self.conditions.layout_group.setChecked(True)
        group = self.findChild(QgsCollapsibleGroupBox, "RsgenConditions")
        if group is not None:
            group.setCollapsed(False)

    # -- models and provider -------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        packages, hint, problems = model_choices(settings.model_dirs())
        current = self.model_combo.currentData() or settings.last("model")
        self._manifests = {pkg.id: pkg.manifest for pkg in packages}
        self._model_sha = {pkg.id: pkg.denoiser_sha256 for pkg in packages}
        self.model_combo.clear()
        for pkg in packages:
            self.model_combo.addItem(pkg.name, pkg.id)
            self.model_combo.setItemData(self.model_combo.count() - 1, pkg.path, Qt.ItemDataRole.ToolTipRole)
        for choice in (current, DEFAULT_MODEL, None):  # last used, else the default model, else the first
            i = self.model_combo.findData(choice) if choice else min(0, self.model_combo.count() - 1)
            if i >= 0 or choice is None:
                self.model_combo.setCurrentIndex(i)
                break
        self.model_hint.setText(hint)
        self.model_hint.setVisible(bool(hint))
        self.model_hint.setToolTip(problems)
        self.models_menu.update_actions()
        self._update_buttons()

    def _on_model_changed(self) -> None:
        """The guidance control takes the chosen model's range (a distilled model's is narrower)."""
        manifest = self._manifests.get(self.model_combo.currentData(), {})
        lo, hi, tip = guidance_limits(manifest)
        self.guidance_spin.setRange(lo, hi)
        self.guidance_spin.setToolTip(tip)
        has, tip = class_guidance_hint(manifest)
        self.class_spin.setEnabled(has)
        self.class_spin.setToolTip(tip)
        if has and self._class_from_model:  # no value of the user's yet: the model's own
            self.class_spin.setValue(float((manifest.get("defaults") or {}).get("class_guidance", 0.0)))
        has, tip = autoguidance_hint(manifest)
        self.auto_spin.setEnabled(has)
        self.auto_spin.setToolTip(tip)
        if has and self._auto_from_model:
            self.auto_spin.setValue(float((manifest.get("defaults") or {}).get("autoguidance", 1.0)))
        self.models_menu.update_actions()
        rng = self.gsd_range()
        self.gsd_range_label.setText(tr("Model: {lo:g}–{hi:g} m").format(lo=rng[0], hi=rng[1]) if rng else "")
        self.gsd_range_label.setVisible(bool(rng))
        self._schedule()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        prompts = settings.recent_prompts()
        for prompt in prompts:
            text = prompt if len(prompt) <= 60 else prompt[:59] + "…"
            action = self.recent_menu.addAction(text)
            action.setToolTip(prompt)
            action.triggered.connect(lambda _=False, p=prompt: self.prompt_edit.setPlainText(p))
        if not prompts:
            self.recent_menu.addAction(tr("(none yet)")).setEnabled(False)

    def _models_changed(self, select: Optional[str]) -> None:
        """A folder was added or a package installed (the model menu): list again, and select the new model at its
        own steps, guidance and sampler (installing it is the user's pick: with the default model installed from
        three zips, its 10 steps at 5 rather than the values the panel had for another)."""
        self.refresh_models()
        i = self.model_combo.findData(select) if select else -1
        if i >= 0:
            self.model_combo.setCurrentIndex(i)
            self._apply_model_defaults()

    def _apply_model_defaults(self) -> None:
        """A model the user picks brings the steps, guidance and sampler its package was evaluated with
        (manifest `defaults`; an SD-class package wants 25 steps at 7.5, rsgen-base 20 at 3, rsgen-base-1 10 at 5).
        At start-up the dock keeps the last values instead (on a fresh profile, with none stored, the chosen
        model's): this runs on the user's choice, not on programmatic changes."""
        d = self._manifests.get(self.model_combo.currentData(), {}).get("defaults") or {}
        if isinstance(d.get("steps"), int) and not isinstance(d["steps"], bool):
            self.steps_spin.setValue(d["steps"])
        if isinstance(d.get("guidance"), (int, float)) and not isinstance(d["guidance"], bool):
            self.guidance_spin.setValue(float(d["guidance"]))  # clamped to the model's range (_on_model_changed)
        i = self.sampler_combo.findData(d.get("sampler")) if isinstance(d.get("sampler"), str) else -1
        if i >= 0:
            self.sampler_combo.setCurrentIndex(i)
        cg = d.get("class_guidance")
        if isinstance(cg, (int, float)) and not isinstance(cg, bool):
            self.class_spin.setValue(float(cg))
        ag = d.get("autoguidance")
        if isinstance(ag, (int, float)) and not isinstance(ag, bool):
            self.auto_spin.setValue(float(ag))

    # -- settings of a generated image ---------------------------------------------------------------------
    def recall(self, rec: Recorded) -> List[str]:
        """Fill the dock with what a generated image records: its extent (as a drawn rectangle, in the map's
        CRS), pixel size, prompt, seed, steps, guidance, sampler, precision and model, so that Generate makes it
        again, or a variant after one change (Random seed). Returns what the user must know: conditions to give
        again, a model that is missing or changed, a map CRS other than the image's."""
        r, notes = rec.request, list(rec.notes)
        self.prompt_edit.setPlainText(str(r.get("prompt", "")))
        seed = int(r.get("seed", 0))
        if seed > self.seed_spin.maximum():
            notes.append(tr("Its seed {s} is larger than the dock takes; use the command line "
                            "(python -m rsgen_qgis regenerate) for the same pixels.").format(s=seed))
        self.seed_spin.setValue(min(seed, self.seed_spin.maximum()))
        self.steps_spin.setValue(int(r.get("steps", self.steps_spin.value())))
        for combo, key in ((self.sampler_combo, "sampler"), (self.precision_combo, "precision")):
            i = combo.findData(r.get(key))
            if i >= 0:
                combo.setCurrentIndex(i)
        model = r.get("model", DEFAULT_MODEL)
        i = self.model_combo.findData(model)
        if i >= 0:
            self.model_combo.setCurrentIndex(i)
            note = model_change_note(rec, self._model_sha.get(model))
            if note:
                notes.append(note)
        else:
            notes.append(tr("Model {m!r} is not installed here; the dock keeps {c!r}.").format(
                m=model, c=self.model_combo.currentText()))
        self.guidance_spin.setValue(float(r.get("guidance", self.guidance_spin.value())))  # after the model's range
        if isinstance(r.get("class_guidance"), (int, float)):  # None (the model's default) keeps the dock's value
            self.class_spin.setValue(float(r["class_guidance"]))
        if isinstance(r.get("autoguidance"), (int, float)):
            self.auto_spin.setValue(float(r["autoguidance"]))
        self.large_check.setChecked(bool(r.get("large_area", False)))
        try:
            crs = crs_from_text(r["crs"])
            map_crs = self.canvas.mapSettings().destinationCrs()
            self.drawn_rect = extent_in(tuple(r["extent"]), crs, map_crs)
        except RsgenError as exc:
            notes.append(str(exc))
        else:
            if crs != map_crs:
                notes.append(tr("The image was made in {c}; the map is in {m}, so the new one will be on the map's "
                                "grid. Set the project CRS to {c} for the same pixels.").format(
                    c=describe_crs(crs), m=describe_crs(map_crs)))
            self.source_combo.setCurrentIndex(self.source_combo.findData("drawn"))
            self._source_changed_ui()
            self.update_size()  # settles the pixel-size units for this CRS before the recorded size goes in
            if r.get("gsd") and crs == map_crs:
                self.gsd_spin.setValue(float(r["gsd"]))
                self.size_mode = "gsd"
            elif r.get("width") and r.get("height"):
                set_quiet(self.height_spin, int(r["height"]))
                self.width_spin.setValue(int(r["width"]))
                self.size_mode = "width"
            elif r.get("gsd"):  # another CRS: keep the ground size of a pixel
                notes.append(tr("Set the pixel size: the image's {g} was in its own CRS units.").format(g=r["gsd"]))
            self.update_size()
            if crs == map_crs and not same_grid(self.grid, r):
                notes.append(tr("The panel cannot make the image's exact pixel grid (non-square pixels?); check "
                                "Size before generating."))
        if rec.conditions_text():
            notes.append(tr("It was made with {what}: give them again under Conditions.").format(
                what=rec.conditions_text()))
        # the dock's block_windows is the model's default (None): a recorded value equal to it is no loss
        from ..core.engine.blocks import default_block_windows
        from ..core.runtime.models import ModelPackage

        same = dict(DOCK_LACKS, block_windows=default_block_windows(
            ModelPackage("", self._manifests.get(self.model_combo.currentData(), {})).factor))
        lacking = [f"{k} {r[k]}" for k, default in DOCK_LACKS.items() if r.get(k, default) not in (default, same[k])]
        if lacking:
            notes.append(tr("The panel has no control for its {what}; the command line keeps them (python -m "
                            "rsgen_qgis regenerate).").format(what=", ".join(lacking)))
        return notes

    def show_provider(self, actual: Optional[str] = None, graph: Optional[str] = None) -> None:
        """Which ONNX Runtime execution provider runs: the real one (and the graph) after a run, the first
        choice before."""
        text, ok = provider_text(settings.provider_preference(), actual, graph)
        self.provider_label.setText(text)
        self.provider_label.setStyleSheet("" if ok else ERROR_STYLE)

    # -- generate / cancel ---------------------------------------------------------------------------------
    def build_request(self) -> GenerationRequest:
        """The request, conditions included as arrays (layers and rasters are read here, on the main thread)."""
        model = self.model_combo.currentData()
        if not model:
            raise ModelPackageError(tr("No model to generate with: install one (… > Install a Model Package from a "
                                       "Zip) or add a folder with model packages."))
        output = self.output_widget.filePath().strip()
        if output and not output.lower().endswith((".tif", ".tiff")):
            output += ".tif"
        params = dict(output=output or QgsProcessingUtils.generateTempFilename("rsgen.tif"),
                      prompt=self.prompt_edit.toPlainText().strip(), seed=self.seed_spin.value(),
                      steps=self.steps_spin.value(), guidance=self.guidance_spin.value(),
                      sampler=self.sampler_combo.currentData(), model=model, pixel_budget=settings.pixel_budget(),
                      precision=self.precision_combo.currentData(),
                      class_guidance=self.class_spin.value() if self.class_spin.isEnabled() else None,
                      autoguidance=self.auto_spin.value() if self.auto_spin.isEnabled() else None)
        ext = self.current_extent()
        if self.conditions.raster_mode():  # the raster's own grid, in the Area's extent
            return self.conditions.raster_request(extent=ext, crs=self.canvas.mapSettings().destinationCrs(),
                                                  large_area=self.large_check.isChecked(), **params)
        size = ({"gsd": self.gsd_spin.value()} if self.size_mode == "gsd" else
                {"width": self.width_spin.value(), "height": self.height_spin.value()})
        req = GenerationRequest(extent=ext.bounds, crs=ext.crs_wkt, large_area=self.large_check.isChecked(),
                                **params, **size)
        return self.conditions.with_layout(req)

    def generate(self) -> Optional[GenerationTask]:
        """Start the request (or the first of Images variants: the others follow, one after the other)."""
        if self.task is not None:
            return None
        try:
            self.update_size()
            req = self.build_request()
            fresh = None if self.output_widget.filePath().strip() else \
                (lambda: QgsProcessingUtils.generateTempFilename("rsgen.tif"))
            queue = req.variants(self.count_spin.value(), fresh)
            for r in queue:
                busy = layers_using_file(r.output)
                if busy:
                    raise OutputError(tr(
                        "{path} is open in this project as the layer “{name}”: remove that layer or choose another "
                        "Output file (overwriting it would leave the layer showing the old image, and Windows "
                        "refuses it).").format(path=r.output, name=busy[0].name()))
            from ..core.runtime.providers import choose

            providers = choose(settings.provider_preference())
        except RsgenError as exc:
            self._message(str(exc), Qgis.MessageLevel.Critical)
            return None
        except ImportError as exc:
            from ..gis.task import missing_package_message

            self._message(missing_package_message(exc), Qgis.MessageLevel.Critical)
            return None
        if self.conditions.notes:
            self._message(" ".join(self.conditions.notes), Qgis.MessageLevel.Info, 8)
        settings.remember_prompt(req.prompt)
        settings.set_last(prompt=req.prompt, model=req.model, seed=req.seed, steps=req.steps,
                          guidance=req.guidance, sampler=req.sampler, precision=req.precision)
        if req.class_guidance is not None:
            settings.set_last(class_guidance=req.class_guidance)
            self._class_from_model = False
        if req.autoguidance is not None:
            settings.set_last(autoguidance=req.autoguidance)
            self._auto_from_model = False
        if self._units == "m" and req.gsd:
            settings.set_last(gsd_m=req.gsd)
        self._queue, self._providers, self._done = queue[1:], providers, []
        mode = self.conditions.raster_mode()
        self._source = (self.conditions.result_label(), self.conditions.raster_layer().name()) if mode else None
        task = self._start(queue[0])
        if req.large_area and self._estimate_text:  # estimated when Large area was ticked, not now
            self.status_label.setText(self._estimate_text)
            self._message(self._estimate_text, Qgis.MessageLevel.Info, 10)
        return task

    def result_name(self, req: GenerationRequest) -> str:
        """The layer's name: what was done, to what ("Inpainted: orthophoto (seed 3)", "Generated (seed 4)")."""
        if self._source:
            return source_layer_name(self._source[0], self._source[1], req.seed)
        return layer_name(req.prompt, req.seed)

    def _start(self, req: GenerationRequest) -> GenerationTask:
        self.task = GenerationTask(req, settings.model_dirs(), self._providers, self._on_success, self._on_failure,
                                   name=self.result_name(req))
        self._descriptions.add(self.task.description())
        self.task.progressChanged.connect(lambda v: self.progress.setValue(int(v)))
        self.task.stepMessage.connect(self._step_text)
        self._set_running(True)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _step_text(self, text: str) -> None:
        total = len(self._done) + len(self._queue) + 1
        self.status_label.setText(text if total == 1 else tr("Image {i} of {n}: {text}").format(
            i=len(self._done) + 1, n=total, text=text))

    def cancel(self) -> None:
        self._queue = []  # the variants not started yet are dropped; those already added stay
        if self.task is not None:
            self.status_label.setText(tr("Cancelling…"))
            self.task.cancel()

    def _on_success(self, result, layer) -> None:
        self.task = None
        self._done.append(layer.name())
        if self._queue:  # the next variant
            self._start(self._queue.pop(0))
            return
        self._set_running(False)
        self.progress.setValue(100)
        self.show_provider(result.provider, getattr(result, "denoiser_graph", None))
        g = result.grid
        short = tr("Added {w} × {h} px in {s:.1f} s.").format(w=g.width, h=g.height, s=result.seconds)
        if len(self._done) > 1:
            short = tr("Added {n} images of {w} × {h} px; the last in {s:.1f} s.").format(
                n=len(self._done), w=g.width, h=g.height, s=result.seconds)
        self.status_label.setText(short)  # the path would wrap over many lines in a narrow dock
        self.status_label.setToolTip(result.path)
        keep = ""
        if os.path.abspath(result.path).startswith(os.path.abspath(QgsProcessingUtils.tempFolder()) + os.sep):
            keep = " " + tr("It is a temporary file, deleted when QGIS closes: set an Output file, or right-click "
                            "the layer > Export > Save As… to keep it.")
        reading = prompt_reading(result.path)
        if reading:  # a package with a prompt bank (core.engine.prompt_bank): what the model was told
            keep = " " + tr("The model read the prompt as: {r}.").format(r=reading) + keep
        self._message(tr("Added “{name}”: {short} ({path})").format(name=layer.name(), short=short,
                                                                   path=result.path) + keep,
                      Qgis.MessageLevel.Success, 8)
        QTimer.singleShot(0, self._drop_task_banners)

    def _on_failure(self, message: str, level: int) -> None:
        self.task = None
        if self._done:
            message += " " + tr("({n} of the images were added before.)").format(n=len(self._done))
        self._queue = []
        self._set_running(False)
        self.progress.setValue(0)
        self.status_label.setText(message)
        self._message(message, level, 8 if level == Qgis.MessageLevel.Info else 0)
        QTimer.singleShot(0, self._drop_task_banners)

    def _drop_task_banners(self) -> None:
        """QGIS's main window tells of a task that ended while it was not the active window with a banner of its
        own ("Task failed: <description>" for a Cancel too), pushed after the plugin's message and covering it
        (the file path, the temporary-file warning). The plugin's message says it better: take those banners
        about our own tasks off, so ours is the one in view."""
        bar = self.iface.messageBar()
        try:
            items = list(bar.items())
        except (AttributeError, TypeError):
            return
        for item in items:
            try:
                ours = item.text() in self._descriptions
            except (AttributeError, RuntimeError):
                continue
            if ours:
                bar.popWidget(item)

    def _message(self, text: str, level: int, duration: int = 0) -> None:
        self.iface.messageBar().pushMessage(tr(TITLE), text, level, duration)

    def _set_running(self, running: bool) -> None:
        self.cancel_btn.setEnabled(running)
        if running:
            self.progress.setValue(0)
            self.status_label.setText(tr("Starting…"))
        self._update_buttons()

    def _update_buttons(self) -> None:
        area_ok = self.grid is not None or self.conditions.raster_mode() is not None
        self.generate_btn.setEnabled(self.task is None and area_ok and self.model_combo.count() > 0)

    def cleanup(self) -> None:
        """Called by the plugin's unload(): disconnect from the canvas, drop the map tool, stop the task."""
        self._watch_selection(None)  # no connection left on a layer that outlives the plugin
        self._timer.stop()
        self.conditions.cleanup()
        if self._estimate_task is not None:
            self._estimate_task.on_done = None
            self._estimate_task.cancel()
            self._estimate_task = None
        project = QgsProject.instance()
        for signal, slot in ((self.canvas.extentsChanged, self._schedule),
                             (self.canvas.destinationCrsChanged, self._on_crs_changed),
                             (project.layersAdded, self._update_hint), (project.layersRemoved, self._update_hint)):
            try:
                signal.disconnect(slot)
            except TypeError:
                pass
        if self.canvas.mapTool() is self.tool:
            self.canvas.unsetMapTool(self.tool)
        self.tool.remove()
        self.tool.deleteLater()  # parented to the canvas, which outlives the plugin
        if self.task is not None:
            self.task.on_success = self.task.on_failure = None
            self.task.cancel()
            self.task = None

