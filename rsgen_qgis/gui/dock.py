"""The "Satellite image generation" dock: collects a request on the main thread, hands it to a GenerationTask.

Kept thin on purpose: extents come from gis.extent, the grid and GSD from the engine (gis.extent.fit_grid, so the
numbers shown are exactly what Generate produces), the run from gis.task, the layer from gis.layers.
Mistakes are shown inline (size/GSD) or in QGIS's message bar, never as a traceback.
"""
from __future__ import annotations

import os
import random
from typing import List, Optional

from qgis.core import Qgis, QgsApplication, QgsMapLayerProxyModel, QgsProcessingUtils, QgsVectorLayer
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
from ..core.geo.georef import grid_for_request
from ..core.recall import Recorded, model_change_note
from ..core.request import DEFAULT_MODEL, MAX_CLASS_GUIDANCE, GenerationRequest
from ..gis.extent import (Extent, RectangleMapTool, canvas_extent, crs_from_text, describe_crs, extent_in, fit_grid,
                          from_rectangle, layer_extent, unit_suffix)
from ..gis.layers import layers_using_file
from ..gis.task import GenerationTask
from .conditions import ConditionsPanel
from .models_menu import ModelMenu
from . import (ERROR_STYLE, GUIDANCE_SPIN_RANGE, class_guidance_hint, dspin, duration, form, guidance_limits, metres,
               model_choices, narrow, precision_labels, provider_text, row, sampler_hints, sampler_labels, set_quiet,
               spin, tr, wrap_label)

TITLE = "Satellite image generation"
SOURCES = (("canvas", "Map canvas"), ("layer", "Layer extent"), ("drawn", "Drawn rectangle"))
# request fields the dock always leaves at their defaults: a recalled image that set them is told about
DOCK_LACKS = {"date": None, "cascade": 0, "block_windows": 2}
DEFAULT_LONG_SIDE = 512  # pixels, for a first pixel size when the saved one does not fit the CRS units


def same_grid(grid, recorded: dict) -> bool:
    """Whether the dock's grid is the one a recorded request asks for (same size and transform)."""
    try:
        want = grid_for_request(GenerationRequest.from_dict({**recorded, "output": "recalled.tif"}))
    except RsgenError:
        return False
    return grid is not None and (grid.width, grid.height) == (want.width, want.height) and all(
        abs(a - b) <= 1e-9 * max(1.0, abs(b)) for a, b in zip(grid.transform, want.transform))


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
        self.canvas.extentsChanged.connect(self._schedule)
        self.canvas.destinationCrsChanged.connect(self._on_crs_changed)
        self.refresh_models()
        self.show_provider()
        self.update_size()

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
        af.addRow(tr("Pixel size"), self.gsd_spin)
        self.width_spin, self.height_spin = spin(1, 100000, 512, " px"), spin(1, 100000, 512, " px")
        af.addRow(tr("Size"), row(self.width_spin, QLabel("×"), self.height_spin, stretch=(1, 0, 1)))
        self.size_label = wrap_label()
        af.addRow(tr("Result"), self.size_label)
        self.large_check = QCheckBox(tr("Large area"))
        self.large_check.setToolTip(tr("No pixel budget: the area is generated in world-anchored blocks of "
                                       "overlapping windows, written to disk as they are done (memory stays "
                                       "flat); the number of windows and an estimated time are shown first"))
        af.addRow("", self.large_check)

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
        lay.addWidget(row(self.generate_btn, self.cancel_btn, stretch=(1, 1)))
        for w in (self.progress, self.status_label, self.provider_label):
            lay.addWidget(w)
        lay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(body)
        self.setWidget(scroll)

        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self.draw_btn.toggled.connect(self._on_draw_toggled)
        self.layer_combo.layerChanged.connect(self._watch_selection)
        self.selected_check.toggled.connect(lambda _: self._schedule())
        self._watch_selection(self.layer_combo.currentLayer())
        self.gsd_spin.valueChanged.connect(lambda _: self._edited("gsd"))
        self.width_spin.valueChanged.connect(lambda _: self._edited("width"))
        self.height_spin.valueChanged.connect(lambda _: self._edited("height"))
        self.large_check.toggled.connect(lambda _: self.update_size())
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
        self._schedule()

    def update_size(self) -> None:
        """Recompute the grid for the current extent and the last-edited of pixel size / width / height."""
        self._timer.stop()
        self.grid = None
        crs = self.canvas.mapSettings().destinationCrs()
        self.crs_label.setText(describe_crs(crs))
        units = unit_suffix(crs)
        try:
            ext = self.current_extent()
            if units != self._units:  # first time, or the map CRS changed units: a fresh, sensible pixel size
                self._units = units
                self.gsd_spin.setSuffix(f" {units}")
                self.gsd_spin.setDecimals(8 if units == "deg" else 3)
                size = settings.last("gsd_m") if units == "m" else max(ext.size) / DEFAULT_LONG_SIDE
                set_quiet(self.gsd_spin, size)
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
        except RsgenError as exc:
            self.size_label.setStyleSheet(ERROR_STYLE)
            self.size_label.setText(str(exc))
        self._update_buttons()

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
        self.models_menu.update_actions()

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
        """A folder was added or a package installed (the model menu): list again, and select the new model."""
        self.refresh_models()
        if select:
            self.model_combo.setCurrentIndex(self.model_combo.findData(select))

    def _apply_model_defaults(self) -> None:
        """A model the user picks brings the steps, guidance and sampler its package was evaluated with
        (manifest `defaults`; an SD-class package wants 25 steps at 7.5, rsgen-base 20 at 3). At start-up the
        dock keeps the last values instead: this runs on the user's choice, not on programmatic changes."""
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
        lacking = [f"{k} {r[k]}" for k, default in DOCK_LACKS.items() if r.get(k, default) != default]
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
                      class_guidance=self.class_spin.value() if self.class_spin.isEnabled() else None)
        if self.conditions.raster_mode():  # on the raster's own grid: the Area settings do not apply
            return self.conditions.raster_request(**params)
        ext = self.current_extent()
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
            estimate = self._estimate(req, providers) if req.large_area else ""
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
        if self._units == "m" and req.gsd:
            settings.set_last(gsd_m=req.gsd)
        self._queue, self._providers, self._done = queue[1:], providers, []
        task = self._start(queue[0])
        if estimate:
            self.status_label.setText(estimate)
            self._message(estimate, Qgis.MessageLevel.Info, 10)
        return task

    def _start(self, req: GenerationRequest) -> GenerationTask:
        self.task = GenerationTask(req, settings.model_dirs(), self._providers, self._on_success, self._on_failure)
        self.task.progressChanged.connect(lambda v: self.progress.setValue(int(v)))
        self.task.stepMessage.connect(self._step_text)
        self._set_running(True)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _step_text(self, text: str) -> None:
        total = len(self._done) + len(self._queue) + 1
        self.status_label.setText(text if total == 1 else tr("Image {i} of {n}: {text}").format(
            i=len(self._done) + 1, n=total, text=text))

    @staticmethod
    def _estimate(req: GenerationRequest, providers) -> str:
        """Windows and time of a large-area run, told before it starts (loads the model, times one batch)."""
        from ..core.engine.blocks import estimate_request

        n, seconds = estimate_request(req, settings.model_dirs(), providers)
        return tr("Large area: {n:,} windows × {steps} steps, about {t} (estimate).").format(
            n=n, steps=req.steps, t=duration(seconds))

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
        self._message(tr("Added “{name}”: {short} ({path})").format(name=layer.name(), short=short,
                                                                   path=result.path) + keep,
                      Qgis.MessageLevel.Success, 8)

    def _on_failure(self, message: str, level: int) -> None:
        self.task = None
        if self._done:
            message += " " + tr("({n} of the images were added before.)").format(n=len(self._done))
        self._queue = []
        self._set_running(False)
        self.progress.setValue(0)
        self.status_label.setText(message)
        self._message(message, level, 8 if level == Qgis.MessageLevel.Info else 0)

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
        for signal, slot in ((self.canvas.extentsChanged, self._schedule),
                             (self.canvas.destinationCrsChanged, self._on_crs_changed)):
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

