"""Reuse a generated image's settings: the Layers panel action fills the dock, Generate makes the same pixels.

A generated GeoTIFF records its request (core.recall); right-click > Reuse Generation Settings puts its extent
(as a drawn rectangle), pixel size, prompt, seed, steps, sampler and model back into the dock.
"""
from unittest import mock

import numpy as np
import pytest
import rasterio
from qgis.core import Qgis, QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer

import rsgen_qgis
from rsgen_qgis.core.engine.generate import generate
from rsgen_qgis.core.recall import recorded_request_of
from rsgen_qgis.core.request import Conditions, GenerationRequest
from rsgen_qgis.gis.layers import generation_record
from test_dock import TASK_TIMEOUT_MS, canvas, clean_settings, make_dock, tiny_dock  # noqa: F401  (fixtures)
from untagged import untagged_copy

EXTENT = (453104.0, 6233620.0, 453480.0, 6233900.0)


def made(tmp_path, tiny_model_dir, name="src.tif", **kw):
    base = dict(extent=EXTENT, crs="EPSG:32734", gsd=4.0, prompt="sparse houses among fields", seed=4242,
                steps=3, model="rsgen-tiny", sampler="dpmpp_2m", precision="fp32", output=str(tmp_path / name))
    base.update(kw)
    return generate(GenerationRequest(**base), model_dirs=[tiny_model_dir]).path


def run(dock, qtbot):
    task = dock.generate()
    assert task is not None
    qtbot.waitUntil(lambda: task.done, timeout=TASK_TIMEOUT_MS)
    assert task.error is None, task.error
    return task


def test_recall_fills_the_dock_and_generate_makes_the_same_pixels(tiny_dock, tiny_model_dir, qgis_iface, qtbot,
                                                                  tmp_path):
    src = made(tmp_path, tiny_model_dir)
    dock = tiny_dock
    dock.prompt_edit.setPlainText("something else")
    dock.gsd_spin.setValue(10.0)
    notes = dock.recall(recorded_request_of(src))
    assert notes == []
    assert dock.prompt_edit.toPlainText() == "sparse houses among fields"
    assert dock.seed_spin.value() == 4242 and dock.steps_spin.value() == 3
    assert dock.sampler_combo.currentData() == "dpmpp_2m" and dock.precision_combo.currentData() == "fp32"
    assert dock.source_combo.currentData() == "drawn" and dock.gsd_spin.value() == 4.0
    with rasterio.open(src) as s:
        assert (dock.grid.width, dock.grid.height) == (s.width, s.height)
        assert dock.grid.transform == pytest.approx(s.transform.to_gdal())
        before = s.read()
    dock.output_widget.setFilePath(str(tmp_path / "again.tif"))
    run(dock, qtbot)
    with rasterio.open(tmp_path / "again.tif") as s:
        assert np.array_equal(s.read(), before)
    dock.seed_spin.setValue(4243)  # a variant: one change
    dock.output_widget.setFilePath(str(tmp_path / "variant.tif"))
    run(dock, qtbot)
    with rasterio.open(tmp_path / "variant.tif") as s:
        assert not np.array_equal(s.read(), before) and s.tags()["seed"] == "4243"


def test_recall_tells_what_it_cannot_carry(tiny_dock, tiny_model_dir, canvas, tmp_path):
    layout = np.full((70, 94), 4, np.uint8)
    src = made(tmp_path, tiny_model_dir, conditions=Conditions(layout=layout))
    rec = recorded_request_of(src)
    rec.request.update(model="rsgen-gone", date="2021-06-01", cascade=4, block_windows=3)
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    notes = tiny_dock.recall(rec)
    text = " ".join(notes)
    assert "'rsgen-gone' is not installed" in text
    assert "a layout" in text and "Conditions" in text
    assert "EPSG:32734" in text and "EPSG:3857" in text and "Set the pixel size" in text
    assert "no control for its date 2021-06-01, cascade 4, block_windows 3" in text
    assert tiny_dock.source_combo.currentData() == "drawn"
    r = tiny_dock.drawn_rect  # the recorded extent, now in web mercator
    assert 2.28e6 < r.xMinimum() < r.xMaximum() < 2.29e6 and -4.04e6 < r.yMinimum() < r.yMaximum() < -4.03e6
    assert tiny_dock.model_combo.currentData() == "rsgen-tiny"


def test_recall_of_a_block_footprint_the_model_takes_by_default_says_nothing(tiny_dock, tiny_model_dir, tmp_path):
    """Images made before block_windows defaulted to the package record 2, a pixel package's default: no note."""
    rec = recorded_request_of(made(tmp_path, tiny_model_dir))
    rec.request.update(block_windows=2)
    assert tiny_dock.recall(rec) == []
    rec.request.update(block_windows=1)
    assert any("block_windows 1" in n for n in tiny_dock.recall(rec))


def test_recall_by_width_and_height(tiny_dock, tiny_model_dir, tmp_path):
    src = made(tmp_path, tiny_model_dir, gsd=None, width=47, height=35)
    assert tiny_dock.recall(recorded_request_of(src)) == []
    assert (tiny_dock.grid.width, tiny_dock.grid.height) == (47, 35)
    squashed = made(tmp_path, tiny_model_dir, "squashed.tif", gsd=None, width=47, height=70)  # 2:1 pixels
    notes = tiny_dock.recall(recorded_request_of(squashed))
    assert any("exact pixel grid" in n for n in notes), notes


@pytest.fixture
def spied_iface(qgis_iface):
    names = ("addToolBarIcon", "removeToolBarIcon", "addPluginToRasterMenu", "removePluginRasterMenu",
             "addDockWidget", "removeDockWidget", "addCustomActionForLayerType", "addCustomActionForLayer",
             "removeCustomActionForLayerType")
    with mock.patch.multiple(qgis_iface, **{n: mock.MagicMock(name=n) for n in names}):
        yield qgis_iface


def test_layers_panel_action_on_generated_layers_only(spied_iface, qgis_new_project, tiny_model_dir, tmp_path,
                                                      monkeypatch, clean_settings):  # noqa: F811
    monkeypatch.setenv("RSGEN_MODEL_DIRS", tiny_model_dir)
    spied_iface.mapCanvas().setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:32734"))
    src = made(tmp_path, tiny_model_dir)
    plain = untagged_copy(src, str(tmp_path / "plain.tif"))  # same pixels, no generation record
    project = QgsProject.instance()
    before = QgsRasterLayer(src, "made before the plugin loaded", "gdal")
    project.addMapLayer(before)
    plugin = rsgen_qgis.classFactory(spied_iface)
    plugin.initGui()
    action = plugin.recall_action
    spied_iface.addCustomActionForLayerType.assert_called_once()
    assert spied_iface.addCustomActionForLayerType.call_args[0][0] is action
    assert [c[0] for c in spied_iface.addCustomActionForLayer.call_args_list] == [(action, before)]
    ours, other = QgsRasterLayer(src, "ours", "gdal"), QgsRasterLayer(plain, "other", "gdal")
    kept = QgsRasterLayer(src, "described by its user", "gdal")
    user_meta = kept.metadata()
    user_meta.setAbstract("my own notes")
    kept.setMetadata(user_meta)
    project.addMapLayers([ours, other, kept])
    assert [c[0][1] for c in spied_iface.addCustomActionForLayer.call_args_list] == [before, ours, kept]
    # a generated image opened from disk (or a project saved without metadata) is marked synthetic; others not
    assert before.metadata().abstract().startswith("SYNTHETIC IMAGE")
    assert "Prompt: sparse houses among fields" in ours.metadata().abstract()
    assert other.metadata().abstract() == "" and kept.metadata().abstract() == "my own notes"
    assert generation_record(other) is None and generation_record(None) is None
    with mock.patch("rsgen_qgis.gis.layers.recorded_request_of", side_effect=ImportError("No module named 'rasterio'")):
        assert generation_record(ours) is None  # QGIS without the engine's packages: no action, no crash

    spied_iface.setActiveLayer(other)
    spied_iface.messageBar().clear_messages()
    action.trigger()
    assert spied_iface.messageBar().get_messages(Qgis.Warning) and plugin.dock is None

    spied_iface.setActiveLayer(ours)
    action.trigger()
    dock = plugin.dock
    assert dock is not None and dock.prompt_edit.toPlainText() == "sparse houses among fields"
    assert dock.seed_spin.value() == 4242
    said = spied_iface.messageBar().get_messages(Qgis.Info)
    assert any("Settings of “ours”" in m for m in said), (said, spied_iface.messageBar().get_messages(Qgis.Warning))

    plugin.unload()
    spied_iface.removeCustomActionForLayerType.assert_called_once_with(action)
    n = spied_iface.addCustomActionForLayer.call_count
    project.addMapLayer(QgsRasterLayer(src, "after unload", "gdal"))
    assert spied_iface.addCustomActionForLayer.call_count == n  # no longer listening
    project.removeAllMapLayers()
