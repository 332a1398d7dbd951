"""The dock's Conditions section: ticked layers + rules table -> layout (preview and generation), and a raster layer
to inpaint, super-resolve or vary, each run as a task with the tiny model; mistakes go to the message bar."""
import json

import numpy as np
import pytest
import rasterio
from osgeo import gdal, osr
from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer,
                       QgsRectangle, QgsSettings)

from rsgen_qgis import settings
from rsgen_qgis.core.conditions.encoding import LAYOUT_CLASSES
from rsgen_qgis.core.errors import ParameterError
from rsgen_qgis.core.request import SR_STRENGTH_DEFAULT
from rsgen_qgis.core.conditions.rules import DEFAULT_OSM_RULES
from rsgen_qgis.gis.layers import GROUP_NAME
from rsgen_qgis.gui.dock import GenerationDock
from qgs_layers import memory_layer_from_spec

UTM = "EPSG:32734"
X0, Y0, PX, N = 453000.0, 6234000.0, 10.0, 16
TIMEOUT = 120_000


@pytest.fixture
def dock(qgis_iface, qgis_new_project, tiny_model_dir, monkeypatch):
    QgsSettings().remove("rsgen_qgis")
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, tiny_model_dir)
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem(UTM))
    canvas.setExtent(QgsRectangle(X0, Y0 - N * PX, X0 + N * PX, Y0))
    d = GenerationDock(qgis_iface)
    d.model_combo.setCurrentIndex(d.model_combo.findData("rsgen-tiny"))
    d.steps_spin.setValue(2)
    d.gsd_spin.setValue(PX)
    d.drawn_rect = QgsRectangle(X0, Y0 - N * PX, X0 + N * PX, Y0)  # exactly the test raster's 16 x 16 pixels
    d.source_combo.setCurrentIndex(d.source_combo.findData("drawn"))
    d.update_size()
    assert (d.grid.width, d.grid.height) == (N, N)
    qgis_iface.messageBar().clear_messages()
    yield d
    d.cleanup()
    d.deleteLater()
    QgsSettings().remove("rsgen_qgis")


def add_layer(spec, name, features):
    lyr = memory_layer_from_spec(spec, name, features)
    QgsProject.instance().addMapLayer(lyr)
    return lyr


def square(row, col, n=1):
    x0, y0, x1, y1 = X0 + col * PX + 2, Y0 - (row + n) * PX + 2, X0 + (col + n) * PX - 2, Y0 - row * PX - 2
    return f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"


def run_task(dock, qtbot):
    task = dock.generate()
    assert task is not None, dock.iface.messageBar().get_messages(Qgis.Critical)
    qtbot.waitUntil(lambda: task.done, timeout=TIMEOUT)
    assert task.error is None, task.error
    return task.result.path


def test_layers_listed_and_rules_table_defaults(dock, tmp_path):
    houses = add_layer(f"Polygon?crs={UTM}&field=building:string", "houses", [(square(3, 5), {"building": "yes"})])
    assert [dock.conditions.layer_list.item(i).text() for i in range(dock.conditions.layer_list.count())] == ["houses"]
    assert dock.conditions.rules() == list(DEFAULT_OSM_RULES)  # the table round-trips the defaults exactly
    dock.conditions.tick(houses)
    add_layer(f"LineString?crs={UTM}&field=highway:string", "roads", [])
    assert dock.conditions.ticked_layer_ids() == [houses.id()]  # ticks survive the list refresh
    t = dock.conditions.rules_table
    t.item(t.rowCount() - 1, 4).setText("2")  # building width column edited
    path = tmp_path / "rules.json"
    dock.conditions.save_rules_file(str(path))
    assert json.loads(path.read_text())["rules"][-1]["buffer_m"] == 2.0
    dock.conditions.set_rules(DEFAULT_OSM_RULES[:1])
    dock.conditions.load_rules_file(str(path))
    assert dock.conditions.rules()[-1].buffer_m == 2.0 and len(dock.conditions.rules()) == len(DEFAULT_OSM_RULES)
    t.item(0, 0).setText("forest")
    with pytest.raises(ParameterError, match=r"rules table, rule 1: key 'class': 'forest' is not a layout class"):
        dock.conditions.rules()
    t.item(0, 0).setText("vegetation")
    t.item(0, 5).setText("high")
    with pytest.raises(ParameterError, match="rule 1: priority must be a number"):
        dock.conditions.rules()


def test_preview_layout_adds_styled_class_raster(dock, qgis_iface):
    houses = add_layer(f"Polygon?crs={UTM}&field=building:string", "houses", [(square(3, 5), {"building": "yes"})])
    dock.conditions.layout_group.setChecked(True)
    dock.conditions.tick(houses)
    dock.conditions.preview_btn.click()
    layers = QgsProject.instance().mapLayersByName("Layout preview")
    assert len(layers) == 1
    lyr = layers[0]
    assert [c.label for c in lyr.renderer().classes()] == list(LAYOUT_CLASSES)
    ids = gdal.Open(lyr.source()).ReadAsArray()
    assert ids.shape == (N, N) and ids[3, 5] == LAYOUT_CLASSES.index("building") and (ids > 0).sum() == 1
    assert any("building 1" in m for m in qgis_iface.messageBar().get_messages(Qgis.Info))


def test_generate_with_layout_and_its_errors(dock, qgis_iface, qtbot, tmp_path):
    houses = add_layer(f"Polygon?crs=EPSG:4326&field=building:string", "houses", [])
    dock.conditions.layout_group.setChecked(True)
    assert dock.generate() is None  # nothing ticked
    assert "Tick at least one vector layer" in qgis_iface.messageBar().get_messages(Qgis.Critical)[-1]
    dock.conditions.tick(houses)
    assert dock.generate() is None
    assert "All the chosen layers are empty (houses)" in qgis_iface.messageBar().get_messages(Qgis.Critical)[-1]
    plain = add_layer(f"Polygon?crs={UTM}&field=kind:string", "plain", [(square(1, 1), {"kind": "x"})])
    dock.conditions.tick(plain)
    assert dock.generate() is None
    assert "none of the fields" in qgis_iface.messageBar().get_messages(Qgis.Critical)[-1]
    ok = add_layer(f"Polygon?crs={UTM}&field=building:string", "ok", [(square(3, 5), {"building": "yes"})])
    dock.conditions.tick(ok)
    dock.output_widget.setFilePath(str(tmp_path / "lay.tif"))
    path = run_task(dock, qtbot)
    with rasterio.open(path) as ds:
        assert json.loads(ds.tags()["request"])["conditions"] == {"layout": f"{N}x{N}"}
        assert ds.transform.to_gdal() == pytest.approx((X0, PX, 0, Y0, 0, -PX))


@pytest.fixture
def raster(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (3, N, N), dtype=np.uint8)
    path = str(tmp_path / "src.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, N, N, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((X0, PX, 0, Y0, 0, -PX))
    sr = osr.SpatialReference()
    sr.ImportFromEPSG(32734)
    ds.SetProjection(sr.ExportToWkt())
    for i in range(3):
        ds.GetRasterBand(i + 1).WriteArray(img[i])
    ds = None
    layer = QgsRasterLayer(path, "src")
    QgsProject.instance().addMapLayer(layer)
    return layer, img


def row_gaps(group) -> list:
    """The blank heights between the shown rows of a group's form, top to bottom (a row hidden but left in the form
    keeps its spacing in Qt 5: a gap wider than the others)."""
    from qgis.PyQt.QtWidgets import QFormLayout

    form = group.layout()
    roles = (QFormLayout.ItemRole.LabelRole, QFormLayout.ItemRole.FieldRole, QFormLayout.ItemRole.SpanningRole)
    spans = []
    for r in range(form.rowCount()):
        items = [form.itemAt(r, role) for role in roles]
        shown = [i.widget().geometry() for i in items if i is not None and i.widget() is not None
                 and i.widget().isVisibleTo(group)]
        if shown:
            spans.append((min(g.top() for g in shown), max(g.bottom() for g in shown)))
    return [nxt[0] - prev[1] for prev, nxt in zip(spans, spans[1:])]


def test_raster_modes_inpaint_superres_variation(dock, qgis_iface, qtbot, tmp_path, raster):
    layer, img = raster
    mask = add_layer(f"Polygon?crs={UTM}", "mask", [(square(2, 2, 3), {}), (square(10, 10, 2), {})])
    c = dock.conditions
    dock.show()  # a collapsible group lays its rows out only when shown
    c.mode_combo.setCurrentIndex(c.mode_combo.findData("superres"))
    c.raster_group.setChecked(True)  # opens the group: only the current mode's rows show
    qtbot.wait(50)
    assert not c.mask_combo.isVisibleTo(c) and c.strength_label.isVisibleTo(c)
    gaps = row_gaps(c.raster_group)  # Mode, Raster, Strength, the note: no blank where the mask rows would be
    assert len(gaps) == 3 and max(gaps) - min(gaps) <= 1, gaps
    assert c.strength_value.text() == f"{SR_STRENGTH_DEFAULT:.2f}"  # super-resolution's own default strength
    c.mode_combo.setCurrentIndex(c.mode_combo.findData("inpaint"))
    c.raster_group.setChecked(False)
    c.raster_group.setChecked(True)
    qtbot.wait(50)
    assert c.mask_combo.isVisibleTo(c) and c.grow_spin.isVisibleTo(c) and not c.strength_label.isVisibleTo(c)
    gaps = row_gaps(c.raster_group)  # Mode, Raster, Mask, Selected, Grow by, the note: no blank for Strength
    assert len(gaps) == 5 and max(gaps) - min(gaps) <= 1, gaps
    c.raster_combo.setLayer(layer)
    c.mask_combo.setLayer(mask)
    mask.selectByIds([sorted(mask.allFeatureIds())[1]])
    c.selected_check.setChecked(True)
    c.grow_spin.setValue(0.0)  # the polygon alone (the default grows it by 6 m)
    dock.output_widget.setFilePath(str(tmp_path / "inp.tif"))
    path = run_task(dock, qtbot)
    inside = np.zeros((N, N), bool)
    inside[10:12, 10:12] = True
    with rasterio.open(path) as ds:
        out = ds.read()
        assert ds.transform.to_gdal() == pytest.approx((X0, PX, 0, Y0, 0, -PX)) and ds.crs.to_epsg() == 32734
    assert np.array_equal(out[:, ~inside], img[:, ~inside])
    c.grow_spin.setValue(PX)  # one pixel around the square: its 4-neighbours
    dock.output_widget.setFilePath(str(tmp_path / "grown.tif"))  # inp.tif is a layer now: the dock would refuse it
    req = dock.build_request()
    grown = np.zeros((N, N), bool)
    grown[9:13, 10:12] = grown[10:12, 9:13] = True
    assert np.array_equal(req.conditions.mask, grown)
    c.grow_spin.setValue(0.0)
    c.mode_combo.setCurrentIndex(c.mode_combo.findData("superres"))
    assert not c.mask_combo.isVisibleTo(c) and not c.grow_spin.isVisibleTo(c)
    dock.output_widget.setFilePath(str(tmp_path / "sr.tif"))
    path = run_task(dock, qtbot)
    with rasterio.open(path) as ds:
        assert (ds.width, ds.height) == (4 * N, 4 * N) and ds.res == (PX / 4, PX / 4)
        assert tuple(ds.bounds) == pytest.approx((X0, Y0 - N * PX, X0 + N * PX, Y0))
        cells = ds.read().astype(float).reshape(3, N, 4, N, 4).mean((2, 4))
        assert json.loads(ds.tags()["request"])["conditions"]["strength"] == SR_STRENGTH_DEFAULT
    assert np.abs(cells - img).mean() < 2.0  # held to the raster: each 4 x 4 block averages to its pixel
    c.strength_slider.setValue(70)  # neither mode's default, so a value leaking between modes would show
    c.mode_combo.setCurrentIndex(c.mode_combo.findData("variation"))
    assert c.strength_value.text() == "0.50"  # each mode keeps its own strength
    c.strength_slider.setValue(80)
    assert c.strength_value.text() == "0.80"
    c.mode_combo.setCurrentIndex(c.mode_combo.findData("superres"))
    assert c.strength_value.text() == "0.70"
    c.mode_combo.setCurrentIndex(c.mode_combo.findData("variation"))
    dock.output_widget.setFilePath(str(tmp_path / "var.tif"))
    path = run_task(dock, qtbot)
    with rasterio.open(path) as ds:
        assert json.loads(ds.tags()["request"])["conditions"]["strength"] == 0.8


def test_mask_outside_raster_goes_to_message_bar(dock, qgis_iface, tmp_path, raster):
    layer, _ = raster
    far = add_layer(f"Polygon?crs={UTM}", "far", [("POLYGON((0 0,10 0,10 10,0 10,0 0))", {})])
    c = dock.conditions
    c.raster_group.setChecked(True)
    c.raster_combo.setLayer(layer)
    c.mask_combo.setLayer(far)
    dock.output_widget.setFilePath(str(tmp_path / "never.tif"))
    assert dock.generate() is None
    msg = qgis_iface.messageBar().get_messages(Qgis.Critical)[-1]
    assert "do not overlap raster 'src'" in msg and "Traceback" not in msg
    assert not (tmp_path / "never.tif").exists()
    assert QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME) is None


def test_object_boxes_layer_burns_rotated_boxes_into_the_layout(dock, qgis_iface):
    """Boxes only (no ticked layers): the boxes become building pixels, the rest stays "no information"."""
    from rsgen_qgis.core.conditions.encoding import NO_LAYOUT

    assert dock.conditions.boxes_combo.currentLayer() is None  # optional, off by default
    boxes = add_layer(f"Polygon?crs={UTM}&field=kind:string", "boxes", [(square(4, 6), {"kind": "building"})])
    assert dock.conditions.boxes_combo.currentLayer() is None  # a new layer does not switch boxes on
    dock.conditions.layout_group.setChecked(True)
    dock.conditions.boxes_combo.setLayer(boxes)
    dock.conditions.box_field_combo.setField("kind")
    layout = dock.conditions.layout_for(dock.grid)
    assert layout[4, 6] == LAYOUT_CLASSES.index("building")
    assert (layout == LAYOUT_CLASSES.index("building")).sum() == 1 and (layout == NO_LAYOUT).sum() == N * N - 1
    assert any("Boxes: 1 drawn" in n for n in dock.conditions.notes)
    dock.conditions.box_field_combo.setField("")
    assert dock.generate() is None  # no category field: a clear message, no task
    assert "no field" in qgis_iface.messageBar().get_messages(Qgis.Critical)[-1]
