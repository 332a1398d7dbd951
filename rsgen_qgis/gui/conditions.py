"""The dock's "Conditions" section: a layout from ticked vector layers (with a small rules table), or a raster layer
to inpaint, super-resolve or vary.

Everything here runs on the main thread and ends in plain data: `with_layout(request)` returns the request with its
layout as a numpy array, `raster_request(...)` a request on the raster's own grid: the QgsTask carries only those.
The QGIS work itself lives in gis/ (rasterize, boxes, rasters); this module only reads widgets.
The raster modes work on the dock's extent (a window of the raster, read alone), inpainting only around the
polygons; the rules table shows the columns people edit, the "Edit rules…" dialog all of them.
"""
from __future__ import annotations

from typing import Callable, List, Optional

from qgis.core import (QgsApplication, QgsMapLayerProxyModel, QgsProcessingUtils, QgsProject, QgsRasterLayer,
                       QgsVectorLayer, QgsWkbTypes)
from qgis.gui import QgsCollapsibleGroupBox, QgsFieldComboBox, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                                 QFormLayout, QHeaderView, QLabel, QListWidget, QListWidgetItem, QPushButton,
                                 QSizePolicy, QSlider, QTableWidget, QTableWidgetItem, QToolButton, QVBoxLayout,
                                 QWidget)

import numpy as np

from ..core.conditions.encoding import NO_LAYOUT
from ..core.errors import ConditionError, ParameterError, PixelBudgetError
from ..core.request import DEFAULT_PIXEL_BUDGET, SR_STRENGTH_DEFAULT, Conditions, GenerationRequest
from ..core.conditions.rules import DEFAULT_OSM_RULES, Rule, load_rules, rule_from_dict, rules_to_json
from . import FormRows, dspin, form, narrow, row, tr, wrap_label

COLUMNS = (("class", "Class"), ("field", "Field"), ("values", "Values"), ("geometry", "Geometry"),
           ("buffer_m", "Width m"), ("priority", "Priority"))
RASTER_MODES = (("inpaint", "Inpaint inside polygons"), ("superres", "Super-resolve (4× finer)"),
                ("variation", "Variation (more like this)"))
# what the layer a mode adds is called: "Inpainted: orthophoto (seed 3)"
RASTER_RESULTS = (("inpaint", "Inpainted"), ("superres", "Super-resolved"), ("variation", "Variation"))
DOCK_COLUMNS = ("class", "field", "values", "buffer_m")  # the dock's narrow table; the dialog shows all COLUMNS
GROW_DEFAULT_M = 6.0  # OSM footprints sit a few metres off the roofs and shadows in imagery: 6 m removes them
SOURCE = "rules table"
# (attribute, QGIS theme icon or "", text shown without an icon, tooltip): icons keep the row narrow in any language
RULE_BUTTONS = (("add_rule_btn", "/symbologyAdd.svg", "+", "Add a rule"),
                ("del_rule_btn", "/symbologyRemove.svg", "−", "Delete the selected rules"),
                ("load_rules_btn", "/mActionFileOpen.svg", "Load…", "Load rules from a JSON file"),
                ("save_rules_btn", "/mActionFileSave.svg", "Save…", "Save the rules to a JSON file"),
                ("reset_rules_btn", "", "OSM", "Back to the default OpenStreetMap rules"))


class ConditionsPanel(QWidget):
    """Two collapsible, checkable groups: "Layout from vector layers" and "From a raster layer"."""

    def __init__(self, grid_provider: Callable[[], object], message: Callable[[str, int], None],
                 parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.grid_provider, self.message = grid_provider, message
        self.notes: List[str] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)

        self.layout_group = QgsCollapsibleGroupBox(tr("Layout from vector layers"))
        self.layout_group.setCheckable(True)
        self.layout_group.setChecked(False)
        lf = QVBoxLayout(self.layout_group)
        lf.setContentsMargins(4, 4, 4, 4)
        self.layer_list = QListWidget()
        self.layer_list.setMaximumHeight(self.fontMetrics().lineSpacing() * 6)
        lf.addWidget(self.layer_list)
        self.rules_table = QTableWidget(0, len(COLUMNS))
        self.rules_table.setHorizontalHeaderLabels([tr(label) for _, label in COLUMNS])
        # the columns people edit, shared out over the dock's width: no sideways scrolling (the rest: Edit rules…)
        self.rules_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.rules_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        for c, (key, _) in enumerate(COLUMNS):
            self.rules_table.setColumnHidden(c, key not in DOCK_COLUMNS)
        self.rules_table.verticalHeader().setDefaultSectionSize(self.fontMetrics().lineSpacing() + 6)
        self.rules_table.setMaximumHeight(self.fontMetrics().lineSpacing() * 9)
        self.rules_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        for w in (self.layer_list, self.rules_table):  # never widen the dock: scroll inside instead
            w.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.rules_table.setToolTip(tr("One rule a row: features whose Field has one of the Values (comma-separated, "
                                       "* = any) become Class; lines and points are buffered to Width m; the higher "
                                       "Priority wins where features overlap."))
        lf.addWidget(self.rules_table)
        self.add_rule_btn, self.del_rule_btn = QToolButton(), QToolButton()
        self.load_rules_btn, self.save_rules_btn, self.reset_rules_btn = QToolButton(), QToolButton(), QToolButton()
        for attr, icon_name, text, tip in RULE_BUTTONS:
            button, icon = getattr(self, attr), QgsApplication.getThemeIcon(icon_name) if icon_name else None
            if icon is not None and not icon.isNull():
                button.setIcon(icon)
            else:
                button.setText(tr(text))
            button.setToolTip(tr(tip))
        self.edit_rules_btn = QToolButton()
        icon = QgsApplication.getThemeIcon("/mActionOpenTable.svg")
        if icon.isNull():
            self.edit_rules_btn.setText(tr("Edit rules…"))
        else:
            self.edit_rules_btn.setIcon(icon)
        self.edit_rules_btn.setToolTip(tr("All the rules' columns (geometry, priority) in a larger window"))
        lf.addWidget(row(self.add_rule_btn, self.del_rule_btn, self.load_rules_btn, self.save_rules_btn,
                         self.reset_rules_btn, QWidget(), self.edit_rules_btn, stretch=(0, 0, 0, 0, 0, 1, 0)))
        boxes = form()
        boxes.setContentsMargins(0, 0, 0, 0)
        self.boxes_combo = QgsMapLayerComboBox()
        self.boxes_combo.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.boxes_combo.setFilters(QgsMapLayerProxyModel.Filter.PointLayer | QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.boxes_combo.setAllowEmptyLayer(True)
        self.boxes_combo.setLayer(None)
        self.boxes_combo.setToolTip(tr("Optional: points or polygons drawn on top of the layout as object boxes "
                                       "(polygons as their minimum rotated rectangle)"))
        self.box_field_combo = QgsFieldComboBox()
        self.box_field_combo.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.box_field_combo.setToolTip(tr("The category of each box (building, tree, water, ...)"))
        self.boxes_combo.layerChanged.connect(self.box_field_combo.setLayer)
        boxes.addRow(tr("Object boxes"), self.boxes_combo)
        boxes.addRow(tr("Category"), self.box_field_combo)
        lf.addLayout(boxes)
        self.preview_btn = QPushButton(tr("Preview layout"))
        self.preview_btn.setToolTip(tr("Add the class raster the model will be given, with a legend"))
        lf.addWidget(self.preview_btn)
        lay.addWidget(self.layout_group)

        self.raster_group = QgsCollapsibleGroupBox(tr("From a raster layer"))
        self.raster_group.setCheckable(True)
        self.raster_group.setChecked(False)
        rf = form(self.raster_group)
        rf.setContentsMargins(4, 4, 4, 4)
        self.mode_combo = narrow(QComboBox())
        self.mode_combo.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        for key, label in RASTER_MODES:
            self.mode_combo.addItem(tr(label), key)
        rf.addRow(tr("Mode"), self.mode_combo)
        self.raster_combo = QgsMapLayerComboBox()
        self.raster_combo.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.raster_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        rf.addRow(tr("Raster"), self.raster_combo)
        self.mask_combo = QgsMapLayerComboBox()
        self.mask_combo.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.mask_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.selected_check = QCheckBox(tr("Selected features only"))
        self.mask_label = QLabel(tr("Mask"))
        self.grow_spin = dspin(0.0, 1000.0, GROW_DEFAULT_M, 1, 1.0, " m")
        self.grow_spin.setToolTip(tr("Regenerate this far around the polygons too. OSM building footprints sit a "
                                     "few metres off the roofs and shadows seen from above: with 0 m much of each "
                                     "building stays, 6 m removes it with its shadow, and a border on open ground "
                                     "blends best."))
        self.grow_label = QLabel(tr("Grow by"))
        self.strength_slider = QSlider(Qt.Orientation.Horizontal)
        self.strength_slider.setRange(5, 100)
        self.strength_slider.setValue(50)
        # each mode keeps its own strength: variation 0.5, super-resolution its default (core.request)
        self._strengths = {"variation": 50, "superres": round(SR_STRENGTH_DEFAULT * 100)}
        self._strength_mode: Optional[str] = None
        self.strength_value = QLabel()
        self.strength_label = QLabel(tr("Strength"))
        # each mode's own rows after Mode and Raster (inpainting: its mask; variation, super-resolution: strength)
        self.mode_rows = FormRows(rf, rf.rowCount(), {
            "mask": (self.mask_label, self.mask_combo), "selected": (QLabel(), self.selected_check),
            "grow": (self.grow_label, self.grow_spin),
            "strength": (self.strength_label, row(self.strength_slider, self.strength_value, stretch=(1,)))})
        self.raster_note = wrap_label()
        rf.addRow(self.raster_note)
        lay.addWidget(self.raster_group)

        for group in (self.layout_group, self.raster_group):  # compact: a group opens when it is switched on
            group.setCollapsed(True)
            group.toggled.connect(lambda on, g=group: g.setCollapsed(not on))
        self.set_rules(DEFAULT_OSM_RULES)
        self.refresh_layers()
        self._mode_changed()
        # expanding a collapsible group shows all its rows again: show only the current mode's
        self.raster_group.collapsedStateChanged.connect(self._mode_changed)
        self.mode_combo.currentIndexChanged.connect(self._mode_changed)
        self.strength_slider.valueChanged.connect(self._mode_changed)
        self.add_rule_btn.clicked.connect(self._add_rule)
        self.del_rule_btn.clicked.connect(self._delete_rules)
        self.load_rules_btn.clicked.connect(self._load_rules)
        self.save_rules_btn.clicked.connect(self._save_rules)
        self.reset_rules_btn.clicked.connect(lambda: self.set_rules(DEFAULT_OSM_RULES))
        self.preview_btn.clicked.connect(self._preview_clicked)
        self.edit_rules_btn.clicked.connect(self._edit_rules)
        project = QgsProject.instance()
        project.layersAdded.connect(self.refresh_layers)
        project.layersRemoved.connect(self.refresh_layers)

    # -- vector layers -------------------------------------------------------------------------------------------
    def refresh_layers(self, *_) -> None:
        """List the project's vector layers with geometry, keeping the ticks of those still there."""
        ticked = set(self.ticked_layer_ids())
        self.layer_list.clear()
        for layer in QgsProject.instance().mapLayers().values():
            if isinstance(layer, QgsVectorLayer) and layer.isSpatial():
                item = QListWidgetItem(layer.name())
                item.setData(Qt.ItemDataRole.UserRole, layer.id())
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if layer.id() in ticked else Qt.CheckState.Unchecked)
                self.layer_list.addItem(item)

    def ticked_layer_ids(self) -> List[str]:
        items = (self.layer_list.item(i) for i in range(self.layer_list.count()))
        return [it.data(Qt.ItemDataRole.UserRole) for it in items if it.checkState() == Qt.CheckState.Checked]

    def tick(self, *layers) -> None:
        ids = {layer.id() for layer in layers}
        for i in range(self.layer_list.count()):
            it = self.layer_list.item(i)
            ticked = it.data(Qt.ItemDataRole.UserRole) in ids
            it.setCheckState(Qt.CheckState.Checked if ticked else Qt.CheckState.Unchecked)

    def suggested_layers(self) -> List[QgsVectorLayer]:
        """The project's vector layers that the rules would read (a field the rules name: highway, building...):
        what to offer a user who has only typed a prompt."""
        fields = {r.field for r in DEFAULT_OSM_RULES if r.field}
        for r in range(self.rules_table.rowCount()):
            item = self.rules_table.item(r, [k for k, _ in COLUMNS].index("field"))
            if item is not None and item.text().strip():
                fields.add(item.text().strip())
        return [lyr for lyr in QgsProject.instance().mapLayers().values()
                if isinstance(lyr, QgsVectorLayer) and lyr.isSpatial() and fields & set(lyr.fields().names())]

    def layout_layers(self) -> List[QgsVectorLayer]:
        project = QgsProject.instance()
        return [project.mapLayer(i) for i in self.ticked_layer_ids() if project.mapLayer(i) is not None]

    # -- rules table ---------------------------------------------------------------------------------------------
    def set_rules(self, rules) -> None:
        self.rules_table.setRowCount(0)
        for rule in rules:
            self._append(rule.to_dict())

    def _append(self, d: dict) -> None:
        r = self.rules_table.rowCount()
        self.rules_table.insertRow(r)
        for c, (key, _) in enumerate(COLUMNS):
            v = d.get(key)
            text = ", ".join(str(x) for x in v) if key == "values" else ("" if v is None else f"{v:g}"
                                                                           if isinstance(v, float) else str(v))
            item = QTableWidgetItem(text)
            if c == 0:  # keys the table has no column for (exclude, layer, optional) ride along with the row
                item.setData(Qt.ItemDataRole.UserRole, {k: v for k, v in d.items() if k not in dict(COLUMNS)})
            self.rules_table.setItem(r, c, item)

    def rules(self) -> List[Rule]:
        """The table as validated rules; a mistake is a ParameterError naming the row and the column."""
        out = []
        if self.rules_table.rowCount() == 0:
            raise ParameterError(tr("The rules table is empty; press OSM for the default rules."))
        for r in range(self.rules_table.rowCount()):
            cells = {key: (self.rules_table.item(r, c).text().strip() if self.rules_table.item(r, c) else "")
                     for c, (key, _) in enumerate(COLUMNS)}
            first = self.rules_table.item(r, 0)
            d = dict(first.data(Qt.ItemDataRole.UserRole) or {}) if first else {}
            d["class"] = cells["class"]
            d["field"] = cells["field"] or None
            d["values"] = [v.strip() for v in cells["values"].split(",") if v.strip()] or ["*"]
            d["geometry"] = cells["geometry"] or "any"
            for key, cast in (("buffer_m", float), ("priority", int)):
                if cells[key]:
                    try:
                        d[key] = cast(cells[key])
                    except ValueError:
                        raise ParameterError(f"{SOURCE}, rule {r + 1}: {key} must be a number "
                                             f"(got {cells[key]!r}).") from None
            out.append(rule_from_dict(d, r, SOURCE))
        return out

    def _edit_rules(self) -> None:
        dialog = RulesDialog(self.rules_table, self)
        if dialog.run():
            copy_rows(dialog.table, self.rules_table)

    def _add_rule(self) -> None:
        self._append({"class": "building", "field": "building", "values": ["*"], "geometry": "polygon",
                      "buffer_m": 0.0, "priority": 50})
        self.rules_table.scrollToBottom()

    def _delete_rules(self) -> None:
        for r in sorted({i.row() for i in self.rules_table.selectedIndexes()}, reverse=True):
            self.rules_table.removeRow(r)

    def load_rules_file(self, path: str) -> None:
        self.set_rules(load_rules(path))

    def save_rules_file(self, path: str) -> None:
        from ..gis.boxes import write_text

        write_text(path, rules_to_json(self.rules()))

    def _load_rules(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, tr("Layout rules"), "", "JSON (*.json)")
        if path:
            self._guard(lambda: self.load_rules_file(path))

    def _save_rules(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, tr("Layout rules"), "rules.json", "JSON (*.json)")
        if path:
            self._guard(lambda: self.save_rules_file(path if path.lower().endswith(".json") else path + ".json"))

    def _guard(self, fn) -> None:
        from qgis.core import Qgis

        from ..core.errors import RsgenError

        try:
            fn()
        except RsgenError as exc:
            self.message(str(exc), Qgis.MessageLevel.Critical)

    # -- raster modes --------------------------------------------------------------------------------------------
    def raster_mode(self) -> Optional[str]:
        return self.mode_combo.currentData() if self.raster_group.isChecked() else None

    def _mode_changed(self, *_) -> None:
        mode = self.mode_combo.currentData()
        self.mode_rows.show_only(("mask", "selected", "grow") if mode == "inpaint" else ("strength",)
                                 if mode in self._strengths else ())
        if mode != self._strength_mode and mode in self._strengths:
            if self._strength_mode is not None:
                self._strengths[self._strength_mode] = self.strength_slider.value()
            self.strength_slider.blockSignals(True)
            self.strength_slider.setValue(self._strengths[mode])
            self.strength_slider.blockSignals(False)
            self._strength_mode = mode
            self.strength_slider.setToolTip(
                tr("Lower: start nearer a smooth upscale of the raster (detail closer to what it shows); 1: draw "
                   "all the detail anew") if mode == "superres" else
                tr("Lower: stay closer to the raster; 1: ignore it"))
        self.strength_value.setText(f"{self.strength() :.2f}")
        self.raster_note.setText(tr("On the raster's own grid and CRS, in the Area's extent (inpainting: only "
                                    "around the polygons); only that part of the raster is read")
                                 if mode != "superres" else
                                 tr("The raster in the Area's extent, pixels 4× smaller; each 4×4 block averages "
                                    "to the raster's pixel"))

    def strength(self) -> float:
        return self.strength_slider.value() / 100.0

    # -- requests ------------------------------------------------------------------------------------------------
    def with_layout(self, req: GenerationRequest) -> GenerationRequest:
        """The dock's request plus the layout of the ticked layers when the layout group is on (raises RsgenError)."""
        from ..core.geo.georef import grid_for_request

        self.notes = []
        if not self.layout_group.isChecked():
            return req
        return req.replace(conditions=Conditions(layout=self.layout_for(grid_for_request(req))))

    def layout_for(self, grid):
        from ..gis.rasterize import layers_to_layout, stats_message

        layers = self.layout_layers()
        box_layer = self.boxes_combo.currentLayer()
        if not layers and box_layer is None:
            raise ConditionError(tr("Tick at least one vector layer for the layout, or choose an object boxes "
                                    "layer (Conditions > Layout)."))
        if layers:
            layout, stats = layers_to_layout(layers, self.rules(), grid)
            self.notes.append(stats_message(stats))
            self.notes.extend(stats["warnings"])
        else:  # boxes only: the rest of the image is "no information", not empty ground
            layout = np.full((grid.height, grid.width), NO_LAYOUT, np.uint8)
        if box_layer is not None:
            from ..gis.boxes import boxes_from_layer, burn_boxes

            boxes, counts = boxes_from_layer(box_layer, self.box_field_combo.currentField(), grid)
            layout = burn_boxes(layout, boxes, grid)
            left = {k: v for k, v in counts.items() if v and k != "boxes"}
            self.notes.append(tr("Boxes: {n} drawn").format(n=len(boxes)) + (
                " (" + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in left.items()) + ")" if left else ""))
        return layout

    def raster_layer(self) -> QgsRasterLayer:
        layer = self.raster_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            raise ConditionError(tr("Choose the raster layer to work on (Conditions > From a raster layer)."))
        return layer

    def raster_plan(self, extent, crs):
        """(layer, window of the raster in the extent, output grid) without reading any pixel (the dock's Result
        line); raises ConditionError/CrsError with a message."""
        from ..gis.rasters import sr_grid, window_grid

        layer = self.raster_layer()
        window = window_grid(layer, extent.bounds, crs)
        return layer, window, sr_grid(window) if self.raster_mode() == "superres" else window

    def raster_request(self, output: str, extent, crs, large_area: bool = False, **params) -> GenerationRequest:
        """A request on the chosen raster's grid (inpainting, variation) or its 4x finer twin (super-resolution),
        for the part of the raster in `extent` (map CRS `crs`); inpainting only around the mask's polygons. Over
        the pixel budget it needs Large area: then all three take the engine's large-area path (blocks)."""
        from ..gis.rasters import (SR_FACTOR, mask_from_polygons, mask_window, output_nodata, read_rgb_nodata,
                                   request_on_grid, sr_grid)

        self.notes = []
        mode = self.raster_mode()
        layer, window, _ = self.raster_plan(extent, crs)
        budget = int(params.get("pixel_budget", DEFAULT_PIXEL_BUDGET))
        mask = None
        if mode == "inpaint":
            mask_layer = self.mask_combo.currentLayer()
            if mask_layer is None or mask_layer.geometryType() != QgsWkbTypes.GeometryType.PolygonGeometry:
                raise ConditionError(tr("Choose a polygon layer as the inpainting mask."))
            mask = mask_from_polygons(mask_layer, window, self.selected_check.isChecked(),
                                      target=f"raster {layer.name()!r}", grow_m=self.grow_spin.value())
            r, c, h, w = mask_window(mask, budget)  # the polygons plus a margin of context: all that is read
            window, mask = window.window(c, r, w, h), mask[r:r + h, c:c + w]
        grid = sr_grid(window) if mode == "superres" else window
        over = grid.width * grid.height > budget
        if over and not large_area:
            side = int(budget ** 0.5) // (4 if mode == "superres" else 1)
            raise PixelBudgetError(tr(
                "“{mode}” on this extent gives {w} × {h} px, more than the {budget:,} px of one generation: tick "
                "Large area (the image is then made in parts), or draw a smaller rectangle on the raster (about "
                "{side} × {side} of its pixels).").format(mode=self.mode_combo.currentText(), w=grid.width,
                                                          h=grid.height, budget=budget, side=side))
        image, nodata, notes = read_rgb_nodata(layer, window)  # nodata stays nodata in the output
        self.notes.extend(notes)
        if mode == "inpaint":
            conditions = Conditions(mask=mask, image=image, nodata=output_nodata(nodata, mask))
        elif mode == "superres":
            conditions = Conditions(guide=image, strength=self.strength(),
                                    nodata=output_nodata(nodata, factor=SR_FACTOR))
        else:
            conditions = Conditions(image=image, strength=self.strength(), nodata=output_nodata(nodata))
        return request_on_grid(grid, output, conditions=conditions, large_area=over, **params)

    def result_label(self) -> str:
        """The first part of the added layer's name: what the mode did ("Inpainted")."""
        return tr(dict(RASTER_RESULTS)[self.raster_mode()])

    # -- preview ---------------------------------------------------------------------------------------------------
    def _preview_clicked(self) -> None:
        from qgis.core import Qgis

        from ..core.errors import RsgenError

        try:
            layer = self.preview()
            self.message(tr("Added the layout preview: {notes}").format(notes=" ".join(self.notes)),
                         Qgis.MessageLevel.Info)
            return layer
        except RsgenError as exc:
            self.message(str(exc), Qgis.MessageLevel.Critical)

    def preview(self) -> QgsRasterLayer:
        """Rasterize the ticked layers on the dock's grid and add the class raster with a named legend."""
        from ..gis.layers import generated_group
        from ..gis.rasterize import style_layout_layer, write_layout

        grid = self.grid_provider()
        if grid is None:
            raise ConditionError(tr("Set a valid area and pixel size first (see Area > Result)."))
        self.notes = []
        layout = self.layout_for(grid)
        path = write_layout(QgsProcessingUtils.generateTempFilename("layout.tif"), layout, grid)
        layer = QgsRasterLayer(path, tr("Layout preview"), "gdal")
        style_layout_layer(layer)
        project = QgsProject.instance()
        project.addMapLayer(layer, False)
        generated_group(project).insertLayer(0, layer)
        return layer

    def cleanup(self) -> None:
        project = QgsProject.instance()
        for signal in (project.layersAdded, project.layersRemoved):
            try:
                signal.disconnect(self.refresh_layers)
            except TypeError:
                pass



def copy_rows(src: QTableWidget, dst: QTableWidget) -> None:
    """All rows of one rules table into another (same columns; the cells' hidden data rides along)."""
    dst.setRowCount(0)
    for r in range(src.rowCount()):
        dst.insertRow(r)
        for c in range(src.columnCount()):
            item = src.item(r, c)
            dst.setItem(r, c, item.clone() if item is not None else QTableWidgetItem(""))


class RulesDialog(QDialog):
    """Every column of the layout rules in a window of their own (the dock shows the ones people edit)."""

    def __init__(self, source: QTableWidget, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle(tr("Layout rules"))
        lay = QVBoxLayout(self)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([tr(label) for _, label in COLUMNS])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setToolTip(source.toolTip())
        copy_rows(source, self.table)
        lay.addWidget(self.table)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.resize(720, 420)

    def run(self) -> bool:
        return self.exec() == QDialog.DialogCode.Accepted
