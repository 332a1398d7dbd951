"""Issue 21, "the first hour in QGIS": what a new user tripped over in the dock, each item as a test.

Raster modes on the chosen extent of a raster larger than the pixel budget (reading only that window), the drawn
rectangle's outline, the guide to Conditions, the model's pixel-size range and its warning, a pixel size in degrees
proposed from metres, Generate outside the scroll area, the large-area estimate before the run, the inpainting
margin, Cancel read as cancelled, layer names by operation and source, and the dock's engine settings against the
CLI's. The tiny random-weights model (conftest) generates.
"""
import json
import math
import os
import threading

import numpy as np
import pytest
import rasterio
from osgeo import gdal, osr
from qgis.core import (Qgis, QgsApplication, QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer, QgsRectangle,
                       QgsSettings)
from qgis.PyQt.QtCore import QPoint, Qt
from qgis.PyQt.QtWidgets import QApplication, QScrollArea

from rsgen_qgis import settings
from rsgen_qgis.gis.layers import GROUP_NAME
from rsgen_qgis.gui.dock import GenerationDock
from qgs_layers import memory_layer_from_spec

UTM = "EPSG:32734"
X0, Y0, PX = 453000.0, 6234000.0, 10.0
W, H = 64, 48  # the test raster: 3072 px, three times the budget set below
BUDGET = 32 * 32
TIMEOUT = 120_000


@pytest.fixture
def dock(qgis_iface, qgis_new_project, tiny_model_dir, monkeypatch):
    QgsSettings().remove("rsgen_qgis")
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, tiny_model_dir)
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem(UTM))
    canvas.setExtent(QgsRectangle(X0, Y0 - H * PX, X0 + W * PX, Y0))
    d = GenerationDock(qgis_iface)
    d.model_combo.setCurrentIndex(d.model_combo.findData("rsgen-tiny"))
    d.steps_spin.setValue(2)
    d.gsd_spin.setValue(PX)
    d.update_size()
    qgis_iface.messageBar().clear_messages()
    yield d
    d.cleanup()
    d.deleteLater()
    QgsSettings().remove("rsgen_qgis")


def make_raster(path, w=W, h=H, px=PX, name="src"):
    img = np.random.default_rng(1).integers(0, 256, (3, h, w), dtype=np.uint8)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((X0, px, 0, Y0, 0, -px))
    sr = osr.SpatialReference()
    sr.ImportFromEPSG(32734)
    ds.SetProjection(sr.ExportToWkt())
    for i in range(3):
        ds.GetRasterBand(i + 1).WriteArray(img[i])
    ds = None
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer, img


@pytest.fixture
def raster(tmp_path):
    return make_raster(tmp_path / "src.tif")


def add_layer(spec, name, features):
    lyr = memory_layer_from_spec(spec, name, features)
    QgsProject.instance().addMapLayer(lyr)
    return lyr


def square(row, col, n=1, px=PX):
    x0, y0, x1, y1 = X0 + col * px + 2, Y0 - (row + n) * px + 2, X0 + (col + n) * px - 2, Y0 - row * px - 2
    return f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"


def pixels(row0, col0, rows, cols):
    """A drawn rectangle of whole raster pixels."""
    return QgsRectangle(X0 + col0 * PX, Y0 - (row0 + rows) * PX, X0 + (col0 + cols) * PX, Y0 - row0 * PX)


def run_task(dock, qtbot):
    task = dock.generate()
    assert task is not None, dock.iface.messageBar().get_messages(Qgis.Critical)
    qtbot.waitUntil(lambda: task.done, timeout=TIMEOUT)
    assert task.error is None, task.error
    return task


def raster_mode(dock, mode, layer):
    c = dock.conditions
    c.raster_group.setChecked(True)
    c.mode_combo.setCurrentIndex(c.mode_combo.findData(mode))
    c.raster_combo.setLayer(layer)


def spy_reads(monkeypatch):
    """The windows read from rasters, (width, height) each."""
    from rsgen_qgis.gis import rasters

    seen = []
    real = rasters._read_band

    def spy(layer, band, window):
        seen.append((window.width, window.height))
        return real(layer, band, window)

    monkeypatch.setattr(rasters, "_read_band", spy)
    return seen


def last_critical(dock):
    msgs = dock.iface.messageBar().get_messages(Qgis.Critical)
    return msgs[-1] if msgs else ""


# -- 1. raster modes on the chosen extent of a raster of any size -------------------------------------------------
def test_inpainting_a_drawn_extent_of_a_raster_over_the_budget(dock, qtbot, tmp_path, raster, monkeypatch):
    """The whole raster is three times the budget; a drawn rectangle of it is inpainted, only its window read."""
    layer, img = raster
    settings.set_pixel_budget(BUDGET)
    reads = spy_reads(monkeypatch)
    mask = add_layer(f"Polygon?crs={UTM}", "mask", [(square(12, 12, 3), {})])
    raster_mode(dock, "inpaint", layer)
    dock.conditions.mask_combo.setLayer(mask)
    dock.conditions.grow_spin.setValue(0.0)
    dock.drawn_rect = pixels(8, 8, 16, 16)
    dock.source_combo.setCurrentIndex(dock.source_combo.findData("drawn"))
    dock.seed_spin.setValue(3)
    dock.output_widget.setFilePath(str(tmp_path / "inp.tif"))
    task = run_task(dock, qtbot)
    with rasterio.open(task.result.path) as ds:
        out = ds.read()
        x0, px, _, y0, _, npy = ds.transform.to_gdal()
        assert (px, npy) == pytest.approx((PX, -PX)) and ds.crs.to_epsg() == 32734
        c0, r0 = round((x0 - X0) / PX), round((Y0 - y0) / PX)
        assert 8 <= c0 <= 12 and 8 <= r0 <= 12 and c0 + ds.width <= 24 and r0 + ds.height <= 24  # inside the drawn
    src = img[:, r0:r0 + out.shape[1], c0:c0 + out.shape[2]]
    inside = np.zeros(out.shape[1:], bool)
    inside[12 - r0:15 - r0, 12 - c0:15 - c0] = True
    assert np.array_equal(out[:, ~inside], src[:, ~inside])  # outside the mask: the raster's pixels
    assert reads and all(w <= 16 and h <= 16 for w, h in reads), reads  # never the whole 64 x 48 raster
    assert task.layer.name() == "Inpainted: src (seed 3)"


def test_inpainting_takes_the_masks_features_plus_a_margin(dock, qtbot, tmp_path, raster, monkeypatch):
    """Canvas extent = the whole raster (over the budget): the polygons plus a margin are small enough."""
    layer, img = raster
    settings.set_pixel_budget(BUDGET)
    reads = spy_reads(monkeypatch)
    mask = add_layer(f"Polygon?crs={UTM}", "mask", [(square(30, 40, 2), {})])
    raster_mode(dock, "inpaint", layer)
    dock.conditions.mask_combo.setLayer(mask)
    dock.conditions.grow_spin.setValue(0.0)
    dock.output_widget.setFilePath(str(tmp_path / "near.tif"))
    task = run_task(dock, qtbot)
    with rasterio.open(task.result.path) as ds:
        assert ds.width * ds.height <= BUDGET
        b = ds.bounds
        assert b.left <= X0 + 40 * PX and b.right >= X0 + 42 * PX and b.top >= Y0 - 30 * PX
    assert all(w * h <= BUDGET for w, h in reads), reads


def test_super_resolution_over_the_budget_says_tick_large_area_and_then_works(dock, qtbot, tmp_path, raster):
    layer, img = raster
    settings.set_pixel_budget(BUDGET)
    raster_mode(dock, "superres", layer)
    dock.drawn_rect = pixels(4, 4, 16, 16)  # 64 x 64 px once 4 times finer: over the budget
    dock.source_combo.setCurrentIndex(dock.source_combo.findData("drawn"))
    dock.output_widget.setFilePath(str(tmp_path / "sr.tif"))
    assert dock.generate() is None
    msg = last_critical(dock)
    assert "Large area" in msg and "coarser" not in msg and "rectangle" in msg, msg
    dock.large_check.setChecked(True)
    task = run_task(dock, qtbot)
    assert task.request.large_area
    with rasterio.open(task.result.path) as ds:
        assert (ds.width, ds.height) == (64, 64) and ds.res == pytest.approx((PX / 4, PX / 4))
        assert tuple(ds.bounds) == pytest.approx((X0 + 4 * PX, Y0 - 20 * PX, X0 + 20 * PX, Y0 - 4 * PX))
    assert task.layer.name().startswith("Super-resolved: src (seed")


def test_variation_and_inpainting_of_the_whole_raster_take_the_large_area_path(dock, qtbot, tmp_path, raster):
    """Large area ticked: a raster over the budget is varied / inpainted through the large-area path (blocks)."""
    layer, img = raster
    settings.set_pixel_budget(BUDGET)
    raster_mode(dock, "variation", layer)
    dock.output_widget.setFilePath(str(tmp_path / "var.tif"))
    assert dock.generate() is None
    assert "Large area" in last_critical(dock)
    dock.large_check.setChecked(True)
    task = run_task(dock, qtbot)
    with rasterio.open(task.result.path) as ds:
        assert (ds.width, ds.height) == (W, H)
        assert ds.transform.to_gdal() == pytest.approx((X0, PX, 0, Y0, 0, -PX))
        assert json.loads(ds.tags()["request"])["conditions"]["strength"] == 0.5
    assert task.layer.name().startswith("Variation: src (seed")
    mask = add_layer(f"Polygon?crs={UTM}", "mask", [(square(2, 2, 3), {}), (square(40, 56, 4), {})])
    raster_mode(dock, "inpaint", layer)
    dock.conditions.mask_combo.setLayer(mask)
    dock.conditions.grow_spin.setValue(0.0)
    dock.output_widget.setFilePath(str(tmp_path / "inp_all.tif"))
    task = run_task(dock, qtbot)
    with rasterio.open(task.result.path) as ds:
        out = ds.read()
        assert (ds.width, ds.height) == (W, H)
    inside = np.zeros((H, W), bool)
    inside[2:5, 2:5] = inside[40:44, 56:60] = True
    assert np.array_equal(out[:, ~inside], img[:, ~inside])
    assert not np.array_equal(out[:, inside], img[:, inside])


def test_an_extent_beside_the_raster_is_refused_with_a_way_out(dock, raster, tmp_path):
    layer, _ = raster
    raster_mode(dock, "variation", layer)
    dock.drawn_rect = QgsRectangle(X0 + 5000, Y0 + 5000, X0 + 5200, Y0 + 5200)
    dock.source_combo.setCurrentIndex(dock.source_combo.findData("drawn"))
    dock.output_widget.setFilePath(str(tmp_path / "never.tif"))
    assert dock.generate() is None
    msg = last_critical(dock)
    assert "does not overlap" in msg and "Layer extent" in msg, msg


# -- 2. the drawn rectangle never tints a result --------------------------------------------------------------------
def test_the_drawn_rectangle_is_an_outline_only(dock, qgis_iface, qtbot):
    canvas = qgis_iface.mapCanvas()
    dock.draw_btn.click()
    vp = canvas.viewport()
    qtbot.mousePress(vp, Qt.LeftButton, pos=QPoint(20, 20))
    qtbot.mouseMove(vp, QPoint(80, 80))
    qtbot.mouseRelease(vp, Qt.LeftButton, pos=QPoint(120, 100))
    band = dock.tool.band
    assert not band.asGeometry().isEmpty()
    assert band.fillColor().alpha() == 0 and band.strokeColor().alpha() > 0


# -- 3. a prompt alone is generic: the dock offers the layers that make the image follow the place -----------------
def test_the_dock_offers_loaded_roads_and_buildings(dock):
    dock.show()
    assert dock.layout_hint.isVisibleTo(dock) and "Conditions" in dock.layout_hint.text()
    assert not dock.use_layers_btn.isVisibleTo(dock)
    roads = add_layer(f"LineString?crs={UTM}&field=highway:string", "roads",
                      [(f"LINESTRING({X0} {Y0 - 100},{X0 + 300} {Y0 - 100})", {"highway": "residential"})])
    houses = add_layer(f"Polygon?crs={UTM}&field=building:string", "houses", [(square(3, 5), {"building": "yes"})])
    add_layer(f"Polygon?crs={UTM}&field=name:string", "notes", [(square(9, 9), {"name": "x"})])
    assert dock.use_layers_btn.isVisibleTo(dock)
    assert "roads" in dock.layout_hint.text() and "houses" in dock.layout_hint.text()
    dock.use_layers_btn.click()
    assert dock.conditions.layout_group.isChecked()
    assert set(dock.conditions.ticked_layer_ids()) == {roads.id(), houses.id()}
    assert not dock.layout_hint.isVisibleTo(dock)


# -- 4. the model's pixel-size range beside the pixel size, a warning before Generate --------------------------------
def test_the_models_pixel_size_range_is_shown_and_warned_about(dock, raster, tmp_path):
    dock.show()
    assert "1–20 m" in dock.gsd_range_label.text()  # the tiny model's manifest: training gsd_range_m [1, 20]
    dock.gsd_spin.setValue(50.0)
    dock.update_size()
    assert dock.gsd_warning.isVisibleTo(dock) and "1–20 m" in dock.gsd_warning.text()
    dock.gsd_spin.setValue(10.0)
    dock.update_size()
    assert not dock.gsd_warning.isVisibleTo(dock)
    layer, _ = raster
    raster_mode(dock, "superres", layer)  # 10 m -> 2.5 m: inside
    dock.update_size()
    assert not dock.gsd_warning.isVisibleTo(dock)
    fine, _ = make_raster(tmp_path / "fine.tif", 16, 16, 2.0, "fine")  # 2 m -> 0.5 m: outside
    dock.conditions.raster_combo.setLayer(fine)
    dock.update_size()
    assert dock.gsd_warning.isVisibleTo(dock) and "0.50 m" in dock.gsd_warning.text()


# -- 5. degrees: a pixel size proposed from metres, a warning when the result is tiny --------------------------------
def test_a_pixel_size_in_degrees_follows_metres(dock, qgis_iface, qtbot):
    from rsgen_qgis.core.geo.georef import gsd_metres_mean

    dock.show()
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    canvas.setExtent(QgsRectangle(20.0, -34.3, 20.5, -33.8))  # about 50 km: what QGIS shows after loading a photo
    qtbot.waitUntil(lambda: dock.gsd_spin.suffix().strip() == "deg", timeout=3000)
    dock.update_size()
    canvas.setExtent(QgsRectangle(20.420, -34.025, 20.431, -34.016))  # then zoomed in to about 1 km
    dock.update_size()
    g = dock.grid
    assert g is not None and min(g.width, g.height) >= 64, (g and (g.width, g.height))
    gsd_m = gsd_metres_mean(g)
    assert 1.0 <= gsd_m <= 20.0  # in the model's range
    metres_per_degree = 111_320 * math.sqrt(math.cos(math.radians(34.02)))
    assert dock.gsd_spin.value() == pytest.approx(gsd_m / metres_per_degree, rel=0.05)
    assert f"{gsd_m:.1f} m" in dock.size_label.text() or f"{gsd_m:.2f} m" in dock.size_label.text()
    dock.gsd_spin.setValue(0.00098)  # the user's own value: kept, and a tiny result is said
    dock.update_size()
    assert min(dock.grid.width, dock.grid.height) < 32
    assert dock.gsd_warning.isVisibleTo(dock)
    assert "px" in dock.gsd_warning.text() and "Suggest" in dock.gsd_warning.text()
    dock.suggest_btn.click()
    assert min(dock.grid.width, dock.grid.height) >= 64


# -- 6. Generate, Cancel, progress and status always visible; rules editable without scrolling sideways -------------
def test_generate_and_status_stay_outside_the_scroll_area(dock, qtbot):
    scroll = dock.findChild(QScrollArea)
    for w in (dock.generate_btn, dock.cancel_btn, dock.progress, dock.status_label, dock.provider_label):
        assert not scroll.isAncestorOf(w), w
    dock.conditions.layout_group.setChecked(True)
    dock.conditions.raster_group.setChecked(True)
    dock.resize(360, 520)
    dock.show()
    QApplication.processEvents()
    assert not dock.generate_btn.visibleRegion().isEmpty() and not dock.progress.visibleRegion().isEmpty()
    t = dock.conditions.rules_table
    assert t.horizontalScrollBar().maximum() == 0
    shown = [t.horizontalHeaderItem(c).text() for c in range(t.columnCount()) if not t.isColumnHidden(c)]
    assert len(shown) <= 4 and "Class" in shown and "Values" in shown


def test_the_rules_dialog_edits_every_column(dock, monkeypatch):
    from rsgen_qgis.gui import conditions as conditions_module

    def edit(dialog):
        table = dialog.table
        assert table.columnCount() == len(conditions_module.COLUMNS)
        assert all(not table.isColumnHidden(c) for c in range(table.columnCount()))
        table.item(0, 5).setText("99")
        return True

    monkeypatch.setattr(conditions_module.RulesDialog, "run", edit)
    dock.conditions.layout_group.setChecked(True)  # the group's widgets are off until it is switched on
    dock.conditions.edit_rules_btn.click()
    assert dock.conditions.rules()[0].priority == 99


# -- 7. the large-area estimate before the run, off the main thread, in the progress's units ------------------------
def test_large_area_estimate_comes_first_without_blocking(dock, qtbot, tmp_path, monkeypatch):
    from rsgen_qgis.core.engine import blocks as largearea

    threads = []
    real = largearea.estimate_request

    def spy(*a, **k):
        threads.append(threading.current_thread() is threading.main_thread())
        return real(*a, **k)

    monkeypatch.setattr(largearea, "estimate_request", spy)
    settings.set_pixel_budget(BUDGET)
    dock.gsd_spin.setValue(10.0)  # the 640 x 480 m canvas at 10 m: 3072 px, over the budget
    dock.steps_spin.setValue(1)
    dock.large_check.setChecked(True)
    qtbot.waitUntil(lambda: "windows" in dock.estimate_label.text(), timeout=TIMEOUT)
    assert threads and not any(threads)  # never on the main thread
    text = dock.estimate_label.text()
    total = int(text.split(" windows")[0].replace(",", "").split()[-1])
    steps = []
    dock.output_widget.setFilePath(str(tmp_path / "large.tif"))
    task = dock.generate()
    assert task is not None
    assert len(threads) == 1  # Generate did not estimate again
    task.stepMessage.connect(steps.append)
    qtbot.waitUntil(lambda: task.done, timeout=TIMEOUT)
    assert task.error is None, task.error
    counted = [s for s in steps if s.startswith("Window ")]
    assert counted and all(s.split("/")[1].split()[0] == str(total) for s in counted), (text, counted[:3])


# -- 8. inpainting grows the mask by a few metres by default ---------------------------------------------------------
def test_grow_by_defaults_to_a_few_metres_and_says_why(dock):
    g = dock.conditions.grow_spin
    assert g.value() == 6.0
    assert "OSM" in g.toolTip() and "shadow" in g.toolTip()


# -- 9. Cancel reads as cancelled; the plugin's message is not covered by QGIS's task banner -------------------------
def test_cancel_reads_as_cancelled_and_the_plugins_message_stays_on_top(dock, qgis_iface, qtbot, tmp_path,
                                                                      monkeypatch):
    from qgis.gui import QgsMessageBar

    bar = QgsMessageBar()
    monkeypatch.setattr(qgis_iface, "messageBar", lambda: bar)
    manager = QgsApplication.taskManager()

    def qgis_banner(task_id, status):  # what QGIS's main window does when a task ends while it is not active
        task = manager.task(task_id)
        if task is not None and status == 4:  # QgsTask.Terminated
            bar.pushInfo("Task failed", task.description())
        elif task is not None and status == 3:
            bar.pushInfo("Task complete", task.description())

    manager.statusChanged.connect(qgis_banner)
    try:
        dock.steps_spin.setValue(1000)
        dock.output_widget.setFilePath(str(tmp_path / "c.tif"))
        task = dock.generate()
        dock.cancel()
        qtbot.waitUntil(lambda: task.done, timeout=TIMEOUT)
        qtbot.wait(100)
        assert "cancelled" in dock.status_label.text().lower()
        assert bar.currentItem() is not None and "cancelled" in bar.currentItem().text().lower()
        assert not [i for i in bar.items() if i.title() in ("Task failed", "Task complete")]
        dock.steps_spin.setValue(2)
        dock.gsd_spin.setValue(40.0)
        dock.update_size()
        task = run_task(dock, qtbot)
        qtbot.wait(100)
        assert bar.currentItem() is not None and str(tmp_path / "c.tif") in bar.currentItem().text()
        assert not [i for i in bar.items() if i.title() in ("Task failed", "Task complete")]
    finally:
        manager.statusChanged.disconnect(qgis_banner)


# -- 10. layer names say what was done, and to what ----------------------------------------------------------------
def test_layer_names_by_operation_and_source(dock, qtbot, tmp_path, raster):
    layer, _ = raster
    dock.gsd_spin.setValue(40.0)
    dock.update_size()
    dock.prompt_edit.setPlainText("")
    dock.seed_spin.setValue(5)
    dock.output_widget.setFilePath(str(tmp_path / "a.tif"))
    assert run_task(dock, qtbot).layer.name() == "Generated (seed 5)"
    mask = add_layer(f"Polygon?crs={UTM}", "mask", [(square(2, 2, 3), {})])
    raster_mode(dock, "inpaint", layer)
    dock.conditions.mask_combo.setLayer(mask)
    dock.seed_spin.setValue(3)
    names = []
    for i in range(2):
        dock.output_widget.setFilePath(str(tmp_path / f"inp{i}.tif"))
        names.append(run_task(dock, qtbot).layer.name())
    assert names[0] == "Inpainted: src (seed 3)" and names[1] != names[0] and names[1].startswith(names[0])
    raster_mode(dock, "superres", layer)
    dock.drawn_rect = pixels(0, 0, 8, 8)
    dock.source_combo.setCurrentIndex(dock.source_combo.findData("drawn"))
    dock.output_widget.setFilePath(str(tmp_path / "sr.tif"))
    assert run_task(dock, qtbot).layer.name() == "Super-resolved: src (seed 3)"
    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME)
    assert len(group.findLayers()) == 4


# -- the dock runs the engine as the command line does ---------------------------------------------------------------
def test_the_docks_engine_settings_are_the_command_lines(dock, qtbot, tmp_path, tiny_model_dir, monkeypatch):
    """Same graph, threads, window batching and execution providers (the dock once took 8 times the bench's time
    on a loaded machine: not from its settings)."""
    from rsgen_qgis import cli
    from rsgen_qgis.core.engine import generate as pipeline

    calls = []
    real = pipeline.generate

    def spy(req, *args, **kwargs):
        res = real(req, *args, **kwargs)
        kw = {k: v for k, v in kwargs.items() if k not in ("progress", "cancelled", "model_dirs")}
        calls.append((kw, req.precision, res.provider, res.denoiser_graph))
        return res

    monkeypatch.setattr(pipeline, "generate", spy)
    dock.gsd_spin.setValue(40.0)
    dock.update_size()
    dock.output_widget.setFilePath(str(tmp_path / "dock.tif"))
    run_task(dock, qtbot)
    g = dock.grid
    ext = ",".join(str(v) for v in g.bounds)
    assert cli.main(["generate", "--extent", ext, "--crs", UTM, "--gsd", "40", "--steps", "2", "--model", "rsgen-tiny",
                     "--model-dir", tiny_model_dir, "--out", str(tmp_path / "cli.tif"), "--quiet"]) == 0
    assert len(calls) == 2
    (dock_kw, *dock_rest), (cli_kw, *cli_rest) = calls
    assert dock_kw.get("providers") == cli_kw.get("providers")
    for key in ("window_batch", "threads"):
        assert dock_kw.get(key) == cli_kw.get(key), key
    assert dock_rest == cli_rest  # precision asked, provider that ran, denoiser graph that ran
