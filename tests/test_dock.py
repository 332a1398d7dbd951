"""The dock: live size/GSD for the canvas, a layer or a drawn rectangle; Generate -> a layer in "Generated".

The canvas sits over Swellendam (UTM 34S) like the CLI's demo. Generation uses the tiny random-weights
package from conftest (`tiny_model_dir`), handed to the plugin through $RSGEN_MODEL_DIRS.
"""
import json
import math
import os

import pytest
import rasterio
from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsFeature, QgsGeometry, QgsProject, QgsRectangle,
                       QgsSettings, QgsVectorLayer)
from qgis.PyQt.QtCore import QPoint, Qt

from rsgen_qgis import settings
from rsgen_qgis.core.geo.georef import grid_for_request, gsd_metres_mean
from rsgen_qgis.core.request import GenerationRequest
from rsgen_qgis.gis.layers import GROUP_NAME
from rsgen_qgis.gui import metres as _metres
from rsgen_qgis.gui.dock import GenerationDock

UTM34S = QgsCoordinateReferenceSystem("EPSG:32734")
SWELLENDAM = QgsRectangle(453000.0, 6233600.0, 454600.0, 6235200.0)
TASK_TIMEOUT_MS = 120_000


@pytest.fixture
def clean_settings(monkeypatch):
    """pytest-qgis keeps one settings folder per checkout: start and end every test without our keys."""
    monkeypatch.delenv(settings.ENV_MODEL_DIRS, raising=False)
    QgsSettings().remove("rsgen_qgis")
    yield
    QgsSettings().remove("rsgen_qgis")


@pytest.fixture
def canvas(qgis_iface, qgis_new_project):
    c = qgis_iface.mapCanvas()
    c.setDestinationCrs(UTM34S)
    c.setExtent(SWELLENDAM)
    return c


@pytest.fixture
def make_dock(qgis_iface, canvas, clean_settings):
    docks = []

    def make():
        d = GenerationDock(qgis_iface)
        docks.append(d)
        return d

    yield make
    for d in docks:
        d.cleanup()
        d.deleteLater()


@pytest.fixture
def tiny_dock(make_dock, tiny_model_dir, monkeypatch):
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, tiny_model_dir)
    d = make_dock()
    assert d.model_combo.currentIndex() >= 0, "a model must be selected when one is offered"
    i = d.model_combo.findData("rsgen-tiny")
    assert i >= 0, f"rsgen-tiny not offered; hint: {d.model_hint.text()}"
    d.model_combo.setCurrentIndex(i)
    return d


def expected_grid(extent: QgsRectangle, crs: QgsCoordinateReferenceSystem, **size):
    req = GenerationRequest(extent=(extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()),
                            crs=crs.toWkt(QgsCoordinateReferenceSystem.WKT2_2019), output="", **size)
    return grid_for_request(req)


def test_size_and_gsd_for_canvas_extent(make_dock, canvas):
    dock = make_dock()
    assert "EPSG:32734" in dock.crs_label.text()
    assert dock.gsd_spin.suffix().strip() == "m"
    dock.gsd_spin.setValue(4.0)
    dock.update_size()
    g = expected_grid(canvas.extent(), UTM34S, gsd=4.0)
    assert (dock.width_spin.value(), dock.height_spin.value()) == (g.width, g.height)
    assert dock.grid == g
    gsd_m = gsd_metres_mean(g)
    assert abs(gsd_m - 4.0) < 0.01  # UTM scale factor near the central meridian
    assert f"{g.width} × {g.height} px" in dock.size_label.text()
    assert f"{gsd_m:.2f} m" in dock.size_label.text()


def test_editing_width_keeps_aspect_and_updates_gsd(make_dock, canvas):
    dock = make_dock()
    dock.width_spin.setValue(200)  # the user types a width
    assert dock.size_mode == "width"
    dock.update_size()
    ext = canvas.extent()
    assert dock.width_spin.value() == 200
    assert dock.height_spin.value() == round(200 * ext.height() / ext.width())
    assert dock.gsd_spin.value() == pytest.approx(ext.width() / 200, rel=1e-3)
    assert dock.grid.width == 200


def test_pan_updates_size_live(make_dock, canvas, qtbot):
    dock = make_dock()
    dock.gsd_spin.setValue(8.0)
    dock.update_size()
    before = dock.width_spin.value()
    canvas.setExtent(QgsRectangle(452000.0, 6233000.0, 455600.0, 6235800.0))  # zoom out: more pixels
    qtbot.waitUntil(lambda: dock.width_spin.value() > before, timeout=3000)
    g = expected_grid(canvas.extent(), UTM34S, gsd=8.0)
    assert (dock.width_spin.value(), dock.height_spin.value()) == (g.width, g.height)
    assert dock.gsd_spin.value() == pytest.approx(8.0)


def test_pixel_budget_error_shown_inline(make_dock, canvas):
    dock = make_dock()
    dock.gsd_spin.setValue(0.05)
    dock.update_size()
    assert dock.grid is None
    assert "budget" in dock.size_label.text()
    assert not dock.generate_btn.isEnabled()


def test_geographic_crs_shows_metres(make_dock, canvas, qtbot):
    dock = make_dock()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    canvas.setExtent(QgsRectangle(20.40, -34.03, 20.44, -34.00))
    qtbot.waitUntil(lambda: "EPSG:4326" in dock.crs_label.text(), timeout=3000)
    dock.update_size()
    assert dock.gsd_spin.suffix().strip() == "deg"
    assert dock.grid is not None, dock.size_label.text()  # the proposal fits the budget once snapped to pixels
    assert dock.grid.width * dock.grid.height <= settings.pixel_budget()
    gsd_m = gsd_metres_mean(dock.grid)
    ext = canvas.extent()  # the canvas widens the extent to its own aspect ratio
    deg = max(ext.width(), ext.height()) / 512  # about 512 px on the long side, held to the model's range
    lo, hi = dock.gsd_range()
    want = min(max(deg * 111_000 * math.sqrt(math.cos(math.radians(34.0))), lo), hi)
    # ... and coarser where that would pass the pixel budget (the default model's range ends at 4 m: this view at
    # 4 m is about twice the budget)
    area_m2 = ext.width() * 111_000 * math.cos(math.radians(34.0)) * ext.height() * 111_000
    want = max(want, math.sqrt(area_m2 / settings.pixel_budget()))
    assert gsd_m == pytest.approx(want, rel=0.05)
    assert f"GSD {_metres(gsd_m)}" in dock.size_label.text()


def test_extent_from_layer_in_another_crs(make_dock, canvas):
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", "area", "memory")
    f = QgsFeature()
    f.setGeometry(QgsGeometry.fromRect(QgsRectangle(20.40, -34.03, 20.42, -34.01)))
    layer.dataProvider().addFeatures([f])
    layer.updateExtents()
    QgsProject.instance().addMapLayer(layer)
    dock = make_dock()
    dock.source_combo.setCurrentIndex(dock.source_combo.findData("layer"))
    dock.layer_combo.setLayer(layer)
    dock.update_size()
    ext = dock.current_extent()
    assert 1800 < ext.size[0] < 1900 and 2200 < ext.size[1] < 2300  # 0.02 deg at 34 S, in UTM metres
    assert dock.grid is not None and "EPSG:32734" in dock.crs_label.text()


def test_extent_of_the_selected_features(make_dock, canvas):
    layer = QgsVectorLayer("Polygon?crs=EPSG:32734", "parcels", "memory")
    feats = []
    for rect in (QgsRectangle(453000, 6233600, 453400, 6234000), QgsRectangle(454000, 6234800, 454600, 6235200)):
        f = QgsFeature()
        f.setGeometry(QgsGeometry.fromRect(rect))
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    layer.updateExtents()
    QgsProject.instance().addMapLayer(layer)
    dock = make_dock()
    dock.source_combo.setCurrentIndex(dock.source_combo.findData("layer"))
    dock.layer_combo.setLayer(layer)
    assert dock.selected_check.isEnabled()
    dock.update_size()
    assert dock.current_extent().bounds == pytest.approx((453000, 6233600, 454600, 6235200))  # the whole layer
    dock.selected_check.setChecked(True)
    with pytest.raises(Exception, match="no selected features"):
        dock.current_extent()
    first = sorted(layer.allFeatureIds())[0]
    layer.selectByIds([first])
    dock.update_size()
    assert dock.current_extent().bounds == pytest.approx((453000, 6233600, 453400, 6234000))
    assert dock.grid is not None and (dock.grid.width, dock.grid.height) == (100, 100)  # 400 m at 4 m
    dock.source_combo.setCurrentIndex(dock.source_combo.findData("canvas"))
    assert not dock.selected_check.isEnabled()


def test_drawn_rectangle(make_dock, canvas, qtbot):
    dock = make_dock()
    dock.gsd_spin.setValue(50.0)
    dock.draw_btn.click()
    assert canvas.mapTool() is dock.tool
    vp = canvas.viewport()
    qtbot.mousePress(vp, Qt.LeftButton, pos=QPoint(50, 60))
    qtbot.mouseMove(vp, QPoint(150, 160))
    qtbot.mouseRelease(vp, Qt.LeftButton, pos=QPoint(250, 160))
    assert dock.source_combo.currentData() == "drawn"
    assert not dock.draw_btn.isChecked() and canvas.mapTool() is not dock.tool
    a = canvas.getCoordinateTransform().toMapCoordinates(50, 60)
    b = canvas.getCoordinateTransform().toMapCoordinates(250, 160)
    ext = dock.current_extent()
    assert ext.xmin == pytest.approx(a.x()) and ext.xmax == pytest.approx(b.x())
    assert ext.ymin == pytest.approx(b.y()) and ext.ymax == pytest.approx(a.y())
    assert dock.grid is not None, dock.size_label.text()
    assert not dock.tool.band.asGeometry().isEmpty()  # the area stays outlined on the map


def test_random_seed_button(make_dock):
    dock = make_dock()
    seeds = set()
    for _ in range(5):
        dock.random_btn.click()
        seeds.add(dock.seed_spin.value())
    assert len(seeds) > 1


def test_no_model_gives_hint_and_message(make_dock, qgis_iface, monkeypatch, tmp_path):
    monkeypatch.setattr("rsgen_qgis.core.runtime.models.BUNDLED_DIRS", (str(tmp_path / "none"),))
    dock = make_dock()
    assert dock.model_combo.count() == 0
    assert dock.model_hint.isVisibleTo(dock) and "No model installed" in dock.model_hint.text()
    # the default model needs its autoencoder and its text encoder's package too: the hint names all three zips
    assert all(z in dock.model_hint.text() for z in ("rsgen-base-1.zip", "taef2.zip", "rsgen-base.zip"))
    assert not dock.generate_btn.isEnabled()
    qgis_iface.messageBar().clear_messages()
    assert dock.generate() is None
    msgs = qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert msgs and "No model" in msgs[-1]


def test_generate_adds_layer_to_generated_group(tiny_dock, qgis_iface, qtbot, tmp_path):
    dock = tiny_dock
    dock.prompt_edit.setPlainText("dense housing by a river")
    dock.seed_spin.setValue(7)
    dock.steps_spin.setValue(2)
    dock.gsd_spin.setValue(50.0)
    dock.output_widget.setFilePath(str(tmp_path / "out"))  # no extension: .tif is added
    dock.precision_combo.setCurrentIndex(dock.precision_combo.findData("fp32"))
    dock.update_size()
    assert dock.generate_btn.isEnabled()
    assert dock.build_request().precision == "fp32"
    qgis_iface.messageBar().clear_messages()
    task = dock.generate()
    assert task is not None and not dock.generate_btn.isEnabled() and dock.cancel_btn.isEnabled()
    qtbot.waitUntil(lambda: task.done, timeout=TASK_TIMEOUT_MS)
    assert task.error is None, task.error
    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME)
    assert group is not None
    layers = [n.layer() for n in group.findLayers()]
    assert len(layers) == 1
    layer = layers[0]
    assert layer.isValid() and layer.name() == "dense housing by a river (seed 7)"
    assert layer.source() == str(tmp_path / "out.tif")
    assert layer.crs().authid() == "EPSG:32734"
    meta = layer.metadata()  # Layer Properties > Metadata says what it is, in the project too
    assert meta.abstract().startswith("SYNTHETIC IMAGE") and "Prompt: dense housing by a river" in meta.abstract()
    assert "Seed: 7, steps: 2" in meta.abstract() and "fp32 graph" in meta.abstract()
    assert "synthetic" in meta.keywords().get("rsgen", [])
    g = dock.grid
    assert (layer.width(), layer.height()) == (g.width, g.height)
    with rasterio.open(layer.source()) as ds:
        assert ds.count == 3 and ds.dtypes[0] == "uint8"
        assert ds.transform.to_gdal() == pytest.approx(g.transform)
        assert ds.tags().get("synthetic") == "true"
    assert dock.progress.value() == 100
    assert dock.generate_btn.isEnabled() and not dock.cancel_btn.isEnabled()
    assert "ONNX Runtime:" in dock.provider_label.text() and "will try" not in dock.provider_label.text()
    assert "fp32 graph" in dock.provider_label.text()
    said = qgis_iface.messageBar().get_messages(Qgis.Success)
    assert said and not any("temporary file" in m for m in said)  # a file the user chose is kept
    assert not qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert settings.last("prompt") == "dense housing by a river" and settings.last("precision") == "fp32"
    assert settings.recent_prompts()[0] == "dense housing by a river"
    # without an output file: a temporary one, and the message says how to keep it
    dock.output_widget.setFilePath("")
    qgis_iface.messageBar().clear_messages()
    task = dock.generate()
    qtbot.waitUntil(lambda: task.done, timeout=TASK_TIMEOUT_MS)
    said = qgis_iface.messageBar().get_messages(Qgis.Success)
    assert any("temporary file, deleted when QGIS closes" in m for m in said), said


def test_cancel_leaves_no_file_and_no_layer(tiny_dock, qgis_iface, qtbot, tmp_path):
    dock = tiny_dock
    dock.steps_spin.setValue(1000)
    dock.gsd_spin.setValue(10.0)
    out = tmp_path / "cancelled.tif"
    dock.output_widget.setFilePath(str(out))
    dock.update_size()
    qgis_iface.messageBar().clear_messages()
    task = dock.generate()
    dock.cancel()
    qtbot.waitUntil(lambda: task.done, timeout=TASK_TIMEOUT_MS)
    assert task.was_cancelled
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith("cancelled")]
    assert QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME) is None
    assert any("cancelled" in m for m in qgis_iface.messageBar().get_messages(Qgis.Info))
    assert dock.generate_btn.isEnabled()


def test_engine_error_goes_to_message_bar(tiny_dock, qgis_iface, qtbot, tmp_path):
    """An output folder that does not exist: refused before any work, reported in the message bar."""
    dock = tiny_dock
    dock.gsd_spin.setValue(50.0)
    dock.output_widget.setFilePath(str(tmp_path / "missing" / "folder" / "x.tif"))
    dock.update_size()
    qgis_iface.messageBar().clear_messages()
    task = dock.generate()
    if task is not None:  # refused in the task (check_writable runs in the engine): wait for it
        qtbot.waitUntil(lambda: task.done, timeout=TASK_TIMEOUT_MS)
    msgs = qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert msgs and "Traceback" not in msgs[-1]
    assert "missing" in msgs[-1] or "folder" in msgs[-1]
    assert QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME) is None
    assert dock.generate_btn.isEnabled()


def test_large_area_lifts_the_budget_and_tells_windows_first(tiny_dock, qgis_iface, qtbot, tmp_path):
    """Over the pixel budget: refused inline; with "Large area" ticked the grid is accepted, the dock estimates
    the window count and the time at once (a task), the message bar tells them when the run starts, and the result
    is a valid COG on the exact grid."""
    dock = tiny_dock
    settings.set_pixel_budget(64 * 64)
    dock.steps_spin.setValue(1)
    dock.gsd_spin.setValue(20.0)  # the 1.6 km canvas at 20 m: over a 64 x 64 budget
    dock.update_size()
    assert dock.grid is None and "budget" in dock.size_label.text()
    dock.large_check.setChecked(True)  # re-checks the size at once
    assert dock.grid is not None and dock.grid.width * dock.grid.height > 64 * 64
    size = (dock.grid.width, dock.grid.height)
    dock.output_widget.setFilePath(str(tmp_path / "large.tif"))
    qtbot.waitUntil(lambda: "windows" in dock.estimate_label.text(), timeout=TASK_TIMEOUT_MS)  # a task of its own
    qgis_iface.messageBar().clear_messages()
    task = dock.generate()
    assert task is not None and task.request.large_area
    infos = qgis_iface.messageBar().get_messages(Qgis.Info)
    assert any("windows" in m and "estimate" in m for m in infos), infos
    qtbot.waitUntil(lambda: task.done, timeout=TASK_TIMEOUT_MS)
    assert task.error is None, task.error
    from rsgen_qgis.core.geo.geotiff import is_valid_cog

    with rasterio.open(tmp_path / "large.tif") as ds:
        assert (ds.width, ds.height) == size
        assert ds.transform.to_gdal() == pytest.approx(dock.grid.transform)
    ok, problems = is_valid_cog(str(tmp_path / "large.tif"))
    assert ok, problems


def test_choosing_a_model_takes_its_defaults(make_dock, tiny_model_dir, monkeypatch, tmp_path):
    """Picking a model in the combo sets steps, guidance and sampler from its manifest's defaults; opening the
    dock restores the last values instead, and a package without defaults leaves the controls alone."""
    import json
    import shutil

    sd = tmp_path / "d" / "rsgen-tiny-sd"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), sd)
    man = json.loads((sd / "manifest.json").read_text())
    man.update(id="rsgen-tiny-sd", name="tiny SD-like", defaults={"steps": 25, "guidance": 7.5, "sampler": "ddim"})
    (sd / "manifest.json").write_text(json.dumps(man))
    bare = tmp_path / "d" / "rsgen-tiny-bare"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), bare)
    man = json.loads((bare / "manifest.json").read_text())
    man.pop("defaults", None)
    man.update(id="rsgen-tiny-bare", name="tiny without defaults")
    (bare / "manifest.json").write_text(json.dumps(man))
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, os.pathsep.join([tiny_model_dir, str(tmp_path / "d")]))
    settings.set_last(steps=12, guidance=2.0, sampler="euler", model="rsgen-tiny-sd")
    dock = make_dock()
    assert dock.model_combo.currentData() == "rsgen-tiny-sd"
    assert (dock.steps_spin.value(), dock.guidance_spin.value(), dock.sampler_combo.currentData()) == \
        (12, 2.0, "euler")  # the last values, not the package's
    for mid, want in [("rsgen-tiny", (20, 3.0, "dpmpp_2m_sde")), ("rsgen-tiny-sd", (25, 7.5, "ddim")),
                      ("rsgen-tiny-bare", (25, 7.5, "ddim"))]:
        i = dock.model_combo.findData(mid)
        dock.model_combo.setCurrentIndex(i)
        dock.model_combo.activated.emit(i)  # what a click on the item sends
        assert (dock.steps_spin.value(), dock.guidance_spin.value(), dock.sampler_combo.currentData()) == want, mid
    sde = dock.sampler_combo.findData("dpmpp_2m_sde")
    assert dock.sampler_combo.itemText(sde) == "DPM-Solver++ 2M SDE"
    assert "texture" in dock.sampler_combo.itemData(sde, Qt.ToolTipRole)


def test_a_fresh_profile_opens_on_the_default_model_at_its_defaults(make_dock):
    """No stored setting: the combo selects rsgen-base-1 (the 1.0 preview, the default model) and the steps,
    guidance, sampler and autoguidance are its package's, not the engine's 20 / 3; the demo's 4 m over Swellendam
    is inside its pixel-size range (no warning). Picking rsgen-base brings that model's own."""
    from rsgen_qgis.core.request import DEFAULT_MODEL

    dock = make_dock()
    assert dock.model_combo.currentData() == DEFAULT_MODEL == "rsgen-base-1"
    assert dock.model_combo.findData("rsgen-base") >= 0  # the pixel model stays a choice
    d = dock._manifests["rsgen-base-1"]["defaults"]
    assert (dock.steps_spin.value(), dock.guidance_spin.value(), dock.sampler_combo.currentData()) == \
        (d["steps"], d["guidance"], d["sampler"]) == (10, 5.0, "dpmpp_2m_sde")
    assert dock.auto_spin.isEnabled() and dock.auto_spin.value() == d["autoguidance"] == 3.0
    assert not settings.has_last("steps") and not settings.has_last("model")
    dock.show()
    dock.gsd_spin.setValue(4.0)
    dock.update_size()
    assert "1.17–4 m" in dock.gsd_range_label.text() and not dock.gsd_warning.isVisibleTo(dock)
    req = dock.build_request()
    assert (req.model, req.steps, req.guidance, req.sampler, req.autoguidance) == \
        ("rsgen-base-1", 10, 5.0, "dpmpp_2m_sde", 3.0)
    i = dock.model_combo.findData("rsgen-base")
    dock.model_combo.setCurrentIndex(i)
    dock.model_combo.activated.emit(i)  # the user's pick
    assert (dock.steps_spin.value(), dock.guidance_spin.value()) == (20, 3.0)
    assert not dock.auto_spin.isEnabled()  # rsgen-base carries no weak model
    assert dock.build_request().model == "rsgen-base"


def test_a_stored_model_and_values_are_kept(make_dock):
    """A profile that generated before opens on its last model and values, whichever the default is."""
    settings.set_last(model="rsgen-base", steps=20, guidance=3.0, sampler="dpmpp_2m_sde")
    dock = make_dock()
    assert dock.model_combo.currentData() == "rsgen-base"
    assert (dock.steps_spin.value(), dock.guidance_spin.value()) == (20, 3.0)
    dock.cleanup()
    settings.set_last(model="rsgen-base-1", steps=7, guidance=4.0, sampler="ddim")
    dock = make_dock()
    assert dock.model_combo.currentData() == "rsgen-base-1"
    assert (dock.steps_spin.value(), dock.guidance_spin.value(), dock.sampler_combo.currentData()) == \
        (7, 4.0, "ddim")  # the user's, not the package's 10 / 5 / SDE


def test_guidance_control_follows_the_model(make_dock, tiny_model_dir, monkeypatch, tmp_path):
    """A guidance-distilled model accepts only its distilled scales: the control's range follows the model."""
    from rsgen_qgis.training.export import build_tiny_package

    build_tiny_package(str(tmp_path / "d" / "rsgen-tiny-distilled"), guidance_input=True,
                       model_id="rsgen-tiny-distilled")
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, os.pathsep.join([tiny_model_dir, str(tmp_path / "d")]))
    dock = make_dock()
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("rsgen-tiny"))
    dock.guidance_spin.setValue(7.5)
    assert dock.guidance_spin.maximum() == 30.0 and dock.guidance_spin.value() == 7.5
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("rsgen-tiny-distilled"))
    assert (dock.guidance_spin.minimum(), dock.guidance_spin.maximum()) == (1.0, 5.0)
    assert dock.guidance_spin.value() == 5.0 and "built in" in dock.guidance_spin.toolTip()
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("rsgen-tiny"))
    assert dock.guidance_spin.maximum() == 30.0


def test_install_a_model_zip_from_the_dock(make_dock, tiny_model_zip, qgis_iface, tmp_path, monkeypatch):
    """The plugin from plugins.qgis.org has no model: the model "…" menu installs one from its zip."""
    import shutil

    from qgis.core import QgsApplication

    profile = tmp_path / "profile"
    monkeypatch.setattr(QgsApplication, "qgisSettingsDirPath", staticmethod(lambda: str(profile)))
    zips = [tiny_model_zip]
    dock = make_dock()
    menu = [a.text() for a in dock.add_models_btn.menu().actions()]
    assert menu[:2] == ["Add a Folder with Model Packages…", "Install a Model Package from a Zip…"]
    qgis_iface.messageBar().clear_messages()
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    assert not dock.models_menu.install_zip(str(bad))
    assert "not a readable zip" in " ".join(qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical))
    assert dock.model_combo.findData("rsgen-tiny") < 0
    assert dock.model_combo.currentData() == "rsgen-base-1" and dock.steps_spin.value() == 10  # the default's
    assert dock.models_menu.install_zip(zips[0])
    assert dock.model_combo.currentData() == "rsgen-tiny"
    assert (dock.steps_spin.value(), dock.guidance_spin.value()) == (20, 3.0)  # the installed model's own
    assert settings.settings_model_dirs() == [str(profile / "rsgen_models")]
    assert (profile / "rsgen_models" / "rsgen-tiny" / "manifest.json").is_file()
    said = " ".join(qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Success))
    assert "Installed model" in said and "rsgen_models" in said
    shutil.rmtree(profile)


def test_without_any_model_the_dock_says_how_to_get_one(make_dock, monkeypatch, tiny_model_zip, tmp_path):
    """What the plugin from plugins.qgis.org shows before its model is installed; Generate stays off."""
    from qgis.core import QgsApplication

    from rsgen_qgis.core.runtime import models

    monkeypatch.setattr(models, "BUNDLED_DIRS", ())
    monkeypatch.setattr(QgsApplication, "qgisSettingsDirPath", staticmethod(lambda: str(tmp_path / "profile")))
    dock = make_dock()
    dock.show()
    assert dock.model_combo.count() == 0 and not dock.generate_btn.isEnabled()
    assert dock.model_hint.isVisible()
    assert "Install a Model Package from a Zip" in dock.model_hint.text()
    assert dock.models_menu.install_zip(tiny_model_zip)
    assert not dock.model_hint.isVisible() and dock.model_combo.currentData() == "rsgen-tiny"


def test_refuses_to_overwrite_a_file_open_as_a_layer(tiny_dock, qgis_iface, tmp_path):
    """Writing over a GeoTIFF that a layer shows would leave that layer on the old image (and fail on Windows):
    refused before anything runs, the file untouched."""
    import numpy as np
    import rasterio.transform
    from qgis.core import QgsRasterLayer

    src = tmp_path / "existing.tif"
    with rasterio.open(src, "w", driver="GTiff", width=4, height=4, count=3, dtype="uint8",
                       crs="EPSG:32734", transform=rasterio.transform.from_origin(453000, 6235200, 50, 50)) as d:
        d.write(np.zeros((3, 4, 4), np.uint8))
    before = src.stat().st_mtime_ns
    layer = QgsRasterLayer(str(src), "my orthophoto", "gdal")
    QgsProject.instance().addMapLayer(layer)
    try:
        dock = tiny_dock
        dock.output_widget.setFilePath(str(src))
        dock.update_size()
        qgis_iface.messageBar().clear_messages()
        assert dock.generate() is None
        said = " ".join(qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical))
        assert "“my orthophoto”" in said and "choose another Output file" in said
        assert src.stat().st_mtime_ns == before
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def small_run(dock, output, images=1, prompt="farmland", seed=7):
    """A quick request for the tiny model: 2 steps at 50 m over the canvas."""
    dock.prompt_edit.setPlainText(prompt)
    dock.seed_spin.setValue(seed)
    dock.steps_spin.setValue(2)
    dock.gsd_spin.setValue(50.0)
    dock.count_spin.setValue(images)
    dock.output_widget.setFilePath(str(output))
    dock.update_size()
    return dock


def test_images_makes_seed_variants_one_after_the_other(tiny_dock, qgis_iface, qtbot, tmp_path):
    dock = small_run(tiny_dock, tmp_path / "field.tif", images=3)
    qgis_iface.messageBar().clear_messages()
    assert dock.generate() is not None
    qtbot.waitUntil(lambda: dock.task is None and len(dock._done) == 3, timeout=TASK_TIMEOUT_MS)
    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME)
    names = [n.layer().name() for n in group.findLayers()]
    assert names == ["farmland (seed 9)", "farmland (seed 8)", "farmland (seed 7)"]  # newest on top
    pixels = []
    for seed in (7, 8, 9):
        with rasterio.open(tmp_path / f"field_seed{seed}.tif") as ds:
            assert ds.tags()["seed"] == str(seed)
            pixels.append(ds.read())
    assert not (pixels[0] == pixels[1]).all() and not (pixels[1] == pixels[2]).all()
    assert not (tmp_path / "field.tif").exists()
    assert "Added 3 images" in dock.status_label.text()
    assert len(qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Success)) == 1  # one message, not three
    assert dock.generate_btn.isEnabled()


def test_the_success_message_says_how_a_prompt_bank_read_the_prompt(make_dock, tiny_model_dir, monkeypatch,
                                                                    qgis_iface, qtbot, tmp_path):
    """A model with a prompt bank (core.engine.prompt_bank): the message names the phrases the prompt was read as;
    one without says nothing of it."""
    import shutil

    from rsgen_qgis.gui.dock import prompt_reading
    from rsgen_qgis.training.prompt_bank import attach

    banked = tmp_path / "d" / "rsgen-tiny"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), banked)
    attach(str(banked))
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, str(tmp_path / "d"))
    dock = make_dock()
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("rsgen-tiny"))
    small_run(dock, tmp_path / "b.tif", prompt="farmland with a river")
    qgis_iface.messageBar().clear_messages()
    assert dock.generate() is not None
    qtbot.waitUntil(lambda: dock.task is None and len(dock._done) == 1, timeout=TASK_TIMEOUT_MS)
    reading = prompt_reading(str(tmp_path / "b.tif"))
    assert reading.count("%") == 3
    (text,) = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Success)
    assert f"The model read the prompt as: {reading}." in text
    assert prompt_reading(str(tmp_path / "missing.tif")) == ""


def test_cancel_drops_the_variants_not_started(tiny_dock, qtbot, tmp_path):
    dock = small_run(tiny_dock, tmp_path / "v.tif", images=4)
    assert dock.generate() is not None
    dock.cancel()
    qtbot.waitUntil(lambda: dock.task is None, timeout=TASK_TIMEOUT_MS)
    assert dock._queue == [] and len([p for p in os.listdir(tmp_path) if p.startswith("v_seed")]) <= 1


def test_model_card_from_the_model_menu(make_dock, real_model, tiny_model_dir, monkeypatch):
    """The model … menu opens the chosen package's card (what it can and cannot do); off for a package without."""
    from rsgen_qgis.gui import models_menu

    opened = []
    monkeypatch.setattr(models_menu.QDesktopServices, "openUrl", staticmethod(lambda url: opened.append(url)))
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, tiny_model_dir)
    dock = make_dock()
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("rsgen-base"))
    assert dock.models_menu.model_card_action.isEnabled()
    dock.models_menu.model_card_action.trigger()
    assert [u.toLocalFile() for u in opened] == [os.path.join(real_model, "MODEL_CARD.md")]
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("rsgen-tiny"))
    assert dock.models_menu.model_card() is None and not dock.models_menu.model_card_action.isEnabled()


def test_recent_prompts_menu(make_dock):
    for prompt in ("a forest", "farmland with a river", "a forest", "  a  harbour\n with boats "):
        settings.remember_prompt(prompt)
    assert settings.recent_prompts() == ["a harbour with boats", "a forest", "farmland with a river"]
    for i in range(20):
        settings.remember_prompt(f"prompt {i}")
    assert len(settings.recent_prompts()) == settings.RECENT_PROMPTS
    assert settings.recent_prompts()[0] == "prompt 19"
    dock = make_dock()
    dock._fill_recent()
    actions = dock.recent_menu.actions()
    assert [a.text() for a in actions][:2] == ["prompt 19", "prompt 18"]
    actions[1].trigger()
    assert dock.prompt_edit.toPlainText() == "prompt 18"


def test_ctrl_enter_in_the_prompt_generates(make_dock, qtbot, monkeypatch):
    dock = make_dock()
    calls = []
    monkeypatch.setattr(dock, "generate", lambda: calls.append(1))
    dock.show()
    dock.prompt_edit.setFocus()
    qtbot.waitUntil(dock.prompt_edit.hasFocus, timeout=2000)
    assert dock.generate_btn.isEnabled()
    qtbot.keyClick(dock.prompt_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert calls == [1]
    assert dock.prompt_edit.toPlainText().count("\n") == 0  # the shortcut, not a new line


def test_class_guidance_control_follows_the_model(make_dock, tiny_model_dir, monkeypatch, tmp_path):
    """The Class guidance control is on for a model with a class guide (showing its default until the user
    generated with a value of their own) and off, with a tooltip that says why, for one without; the request
    carries the value, or None (nothing to apply) for a model without a guide."""
    pytest.importorskip("torch", reason="torch builds the class guide's graph")
    import json
    import shutil

    from rsgen_qgis.training.classguide import GuideClassifier, add_to_package, export

    guided = tmp_path / "d" / "rsgen-tiny-guided"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), guided)
    man = json.loads((guided / "manifest.json").read_text())
    man.update(id="rsgen-tiny-guided", name="tiny with a class guide")
    (guided / "manifest.json").write_text(json.dumps(man))
    export(GuideClassifier(2, (4, 8)).eval(), str(tmp_path / "g.onnx"))
    add_to_package(str(guided), str(tmp_path / "g.onnx"), ["Forest", "Desert"],
                   {"Forest": ["a forest"], "Desert": ["a desert"]}, default_scale=4.0)
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, os.pathsep.join([tiny_model_dir, str(tmp_path / "d")]))
    settings.set_last(model="rsgen-tiny-guided")
    dock = make_dock()
    assert dock.model_combo.currentData() == "rsgen-tiny-guided"
    assert dock.class_spin.isEnabled() and dock.class_spin.value() == 4.0
    assert dock.build_request().class_guidance == 4.0
    dock.class_spin.setValue(0.0)
    assert dock.class_spin.text() == "Off" and dock.build_request().class_guidance == 0.0
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("rsgen-tiny"))
    assert not dock.class_spin.isEnabled() and "no class guide" in dock.class_spin.toolTip()
    assert dock.build_request().class_guidance is None


def test_autoguidance_control_follows_the_model(make_dock, tiny_model_dir, monkeypatch, tmp_path):
    """The Autoguidance control is on for a model with a weak model (its default until the user generated with a
    value of their own; 1 shows Off) and off, saying why, for one without, whose request leaves it to the model."""
    import shutil

    from rsgen_qgis.training.weak_model import attach

    weak = tmp_path / "d" / "rsgen-tiny-weak"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), weak)
    man = json.loads((weak / "manifest.json").read_text())
    man.update(id="rsgen-tiny-weak", name="tiny with a weak model")
    (weak / "manifest.json").write_text(json.dumps(man))
    attach(str(weak), str(weak / "denoiser.onnx"), 2.5)
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, os.pathsep.join([tiny_model_dir, str(tmp_path / "d")]))
    settings.set_last(model="rsgen-tiny-weak")
    dock = make_dock()
    assert dock.model_combo.currentData() == "rsgen-tiny-weak"
    assert dock.auto_spin.isEnabled() and dock.auto_spin.value() == 2.5
    assert "weaker version" in dock.auto_spin.toolTip() and dock.build_request().autoguidance == 2.5
    dock.auto_spin.setValue(1.0)
    assert dock.auto_spin.text() == "Off" and dock.build_request().autoguidance == 1.0
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("rsgen-tiny"))
    assert not dock.auto_spin.isEnabled() and "no weaker version" in dock.auto_spin.toolTip()
    assert dock.build_request().autoguidance is None
