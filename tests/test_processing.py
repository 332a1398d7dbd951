"""rsgen:generate through Processing: processing.run, the real qgis_process binary, and the packaged zip.

The tiny random-weights package (conftest's `tiny_model_dir`) reaches the plugin through the model-folders
setting (in-process) or $RSGEN_MODEL_DIRS (qgis_process); the zip test bundles it inside the zip instead.
"""
import os
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import pytest
import rasterio
from qgis.core import (QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingParameterDefinition,
                       QgsSettings)

from rsgen_qgis import settings
from rsgen_qgis.processing.provider import RsgenProvider
from untagged import untagged_copy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian's `qgis_process` wrapper passes a flag 3.22 rejects
EXTENT = "453000,454600,6233600,6235200 [EPSG:32734]"  # xmin,xmax,ymin,ymax: Processing's order
BASE = {"EXTENT": EXTENT, "GSD": 50.0, "PROMPT": "farmland with a river", "MODEL": "rsgen-tiny", "SEED": 3,
        "STEPS": 2, "GUIDANCE": 2.0, "SAMPLER": "ddim"}


@pytest.fixture
def clean_settings(monkeypatch):
    monkeypatch.delenv(settings.ENV_MODEL_DIRS, raising=False)
    QgsSettings().remove("rsgen_qgis")
    yield
    QgsSettings().remove("rsgen_qgis")


@pytest.fixture
def provider(qgis_processing, clean_settings):
    registry = QgsApplication.processingRegistry()
    p = RsgenProvider()
    assert registry.addProvider(p)
    yield p
    registry.removeProvider(p)


@pytest.fixture
def tiny_setting(provider, tiny_model_dir):
    """The tiny model reaches the algorithm through the plugin's model-folders setting (QgsSettings)."""
    settings.set_model_dirs([tiny_model_dir])
    return tiny_model_dir


def run(params):
    import processing

    return processing.run("rsgen:generate", params)


def test_algorithm_definition(tiny_setting):
    alg = QgsApplication.processingRegistry().createAlgorithmById("rsgen:generate")
    assert alg.displayName() == "Generate satellite image"
    names = [p.name() for p in alg.parameterDefinitions()]
    assert names == ["EXTENT", "TARGET_CRS", "GSD", "WIDTH", "HEIGHT", "PROMPT", "MODEL", "SEED", "STEPS",
                     "GUIDANCE", "SAMPLER", "PRECISION", "CLASS_GUIDANCE", "AUTOGUIDANCE", "LARGE_AREA", "CASCADE",
                     "OUTPUT"]
    assert alg.parameterDefinition("CASCADE").flags() & QgsProcessingParameterDefinition.FlagAdvanced
    cg = alg.parameterDefinition("CLASS_GUIDANCE")  # empty = the model's default
    assert cg.flags() & QgsProcessingParameterDefinition.FlagAdvanced and cg.flags() & cg.FlagOptional
    assert cg.defaultValue() is None and cg.maximum() == 50.0
    ag = alg.parameterDefinition("AUTOGUIDANCE")  # empty = the model's default; 1 = off
    assert ag.flags() & QgsProcessingParameterDefinition.FlagAdvanced and ag.flags() & ag.FlagOptional
    assert ag.defaultValue() is None and ag.minimum() == 1.0 and ag.maximum() == 10.0
    precision = alg.parameterDefinition("PRECISION")
    assert precision.options() == ["auto", "fp32"] and precision.usesStaticStrings()
    assert precision.flags() & QgsProcessingParameterDefinition.FlagAdvanced
    model = alg.parameterDefinition("MODEL")
    assert "rsgen-tiny" in model.options()  # discovered through the setting
    assert {"rsgen-base-1", "rsgen-base"} <= set(model.options())  # the bundled ones beside it, both to pick
    assert model.usesStaticStrings() and model.defaultValue() == "rsgen-base-1"  # left alone: the default model
    sampler = alg.parameterDefinition("SAMPLER")
    assert sampler.usesStaticStrings() and sampler.defaultValue() is None  # empty: the model's default
    assert sampler.options() == ["dpmpp_2m", "ddim", "euler", "dpmpp_2m_sde"]  # new ones last: indices keep meaning
    assert "dpmpp_2m_sde: Default" in sampler.help() and "dpmpp_2m: Deterministic" in sampler.help()
    assert alg.parameterDefinition("OUTPUT").type() == "rasterDestination"
    ok, msg = alg.checkParameterValues(dict(BASE, WIDTH=10, HEIGHT=10, OUTPUT="x.tif"), QgsProcessingContext())
    assert not ok and "not both" in msg


def test_processing_run_writes_georeferenced_geotiff(tiny_setting, tmp_path):
    out = str(tmp_path / "gen.tif")
    res = run(dict(BASE, OUTPUT=out))
    assert res["OUTPUT"] == out
    assert res["PROVIDER"].endswith("ExecutionProvider")
    assert 49.0 < res["GSD_METRES"] < 51.0
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32734
        assert (ds.width, ds.height, ds.count) == (32, 32, 3)
        assert ds.transform.to_gdal() == pytest.approx((453000.0, 50.0, 0.0, 6235200.0, 0.0, -50.0))
        tags = ds.tags()
        assert tags["synthetic"] == "true" and tags["prompt"] == "farmland with a river"
        assert tags["seed"] == "3" and tags["sampler"] == "ddim" and tags["model_id"] == "rsgen-tiny"
        first = ds.read()
    res2 = run(dict(BASE, OUTPUT=str(tmp_path / "again.tif")))  # same request, same pixels
    with rasterio.open(res2["OUTPUT"]) as ds:
        assert np.array_equal(ds.read(), first)


def test_processing_autoguidance_reaches_the_request(tiny_setting, tmp_path):
    """AUTOGUIDANCE given: recorded as asked, and the tag says why the tiny model (no weak model) ran without it;
    left empty: the model's default (none for this model)."""
    import json

    with rasterio.open(run(dict(BASE, AUTOGUIDANCE=2.5, OUTPUT=str(tmp_path / "ag.tif")))["OUTPUT"]) as ds:
        tags = ds.tags()
    assert json.loads(tags["request"])["autoguidance"] == 2.5
    assert tags["autoguidance"] == "off: model 'rsgen-tiny' has no weaker model to guide with"
    with rasterio.open(run(dict(BASE, OUTPUT=str(tmp_path / "d.tif")))["OUTPUT"]) as ds:
        assert json.loads(ds.tags()["request"])["autoguidance"] is None and ds.tags()["autoguidance"] == "off"


def test_processing_large_area_lifts_budget_and_reports_windows(tiny_setting, tmp_path):
    from qgis.core import QgsProcessingFeedback

    import processing

    class Feedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.infos, self.texts = [], []

        def pushInfo(self, info):  # noqa: N802
            self.infos.append(info)

        def setProgressText(self, text):  # noqa: N802
            self.texts.append(text)

    settings.set_pixel_budget(1000)
    params = dict(BASE, GSD=25.0, OUTPUT=str(tmp_path / "big.tif"))  # 64 x 64 px > 1000 px
    with pytest.raises(QgsProcessingException, match="budget"):
        run(dict(params, OUTPUT=str(tmp_path / "small.tif")))
    fb = Feedback()
    res = processing.run("rsgen:generate", dict(params, LARGE_AREA=True), feedback=fb)
    with rasterio.open(res["OUTPUT"]) as ds:
        assert (ds.width, ds.height) == (64, 64)
        assert '"block"' in ds.tags()["large_area"]
    assert any(i.startswith("Large area: ") and "windows per step" in i for i in fb.infos)
    assert any(t.startswith("Window ") for t in fb.texts)
    assert not (tmp_path / "small.tif").exists()


def test_processing_cascade(tiny_setting, tmp_path):
    """CASCADE: the coarse pass at 4x the GSD guides the fine one; it needs a GSD."""
    res = run(dict(BASE, CASCADE=4, OUTPUT=str(tmp_path / "c.tif")))
    with rasterio.open(res["OUTPUT"]) as ds:
        tags = ds.tags()
        assert (ds.width, ds.height) == (32, 32)
    assert '"cascade": 4' in tags["request"] and tags["cascade_coarse_model"] == "rsgen-tiny"
    params = dict(BASE, CASCADE=4, WIDTH=32, HEIGHT=32, OUTPUT=str(tmp_path / "x.tif"))
    del params["GSD"]
    with pytest.raises(QgsProcessingException, match="cascade needs a GSD"):
        run(params)
    assert not (tmp_path / "x.tif").exists()


def test_processing_run_width_height_and_target_crs(tiny_setting, tmp_path):
    """Extent in lon/lat, output in UTM: the extent is reprojected; the size is exactly what was asked."""
    params = dict(BASE, EXTENT="20.40,20.42,-34.03,-34.01 [EPSG:4326]", TARGET_CRS="EPSG:32734",
                  WIDTH=40, HEIGHT=30, OUTPUT=str(tmp_path / "wh.tif"))
    del params["GSD"]
    res = run(params)
    with rasterio.open(res["OUTPUT"]) as ds:
        assert ds.crs.to_epsg() == 32734
        assert (ds.width, ds.height) == (40, 30)
        from pyproj import Transformer

        to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32734", always_xy=True)
        xs, ys = to_utm.transform([20.40, 20.42, 20.40, 20.42], [-34.03, -34.03, -34.01, -34.01])
        assert ds.bounds.left == pytest.approx(min(xs), abs=1.0) and ds.bounds.right == pytest.approx(max(xs), abs=1.0)
        assert ds.bounds.bottom == pytest.approx(min(ys), abs=1.0) and ds.bounds.top == pytest.approx(max(ys), abs=1.0)


def test_run_and_load_results_puts_layer_in_generated_group(tiny_setting, tmp_path, loading_iface):
    """From the toolbox the result is loaded like the dock's: named from the prompt, in "Generated"."""
    import processing
    from qgis.core import QgsProject

    res = processing.runAndLoadResults("rsgen:generate", dict(BASE, OUTPUT=str(tmp_path / "loaded.tif")))
    group = QgsProject.instance().layerTreeRoot().findGroup("Generated")
    assert group is not None
    names = [n.layer().name() for n in group.findLayers()]
    assert names == ["farmland with a river (seed 3)"]
    assert group.findLayers()[0].layer().source() == res["OUTPUT"]
    assert group.findLayers()[0].layer().metadata().abstract().startswith("SYNTHETIC IMAGE")


def test_regenerate_same_seed_same_pixels_other_seed_a_variant(tiny_setting, tmp_path):
    import processing
    from qgis.core import QgsProcessingFeedback

    src = run(dict(BASE, OUTPUT=str(tmp_path / "src.tif")))["OUTPUT"]
    again = processing.run("rsgen:regenerate", {"SOURCE": src, "OUTPUT": str(tmp_path / "again.tif")})["OUTPUT"]
    fb = QgsProcessingFeedback()
    variant = processing.run("rsgen:regenerate", {"SOURCE": src, "SEED": 4, "PROMPT": "a forest",
                                                  "OUTPUT": str(tmp_path / "variant.tif")}, feedback=fb)["OUTPUT"]
    with rasterio.open(src) as a, rasterio.open(again) as b, rasterio.open(variant) as c:
        assert np.array_equal(a.read(), b.read()) and b.tags()["sampler"] == "ddim" and b.tags()["steps"] == "2"
        assert c.transform == a.transform and not np.array_equal(a.read(), c.read())
        assert c.tags()["seed"] == "4" and c.tags()["prompt"] == "a forest"


def test_regenerate_refuses_what_it_cannot_make(tiny_setting, tmp_path):
    import processing

    src = run(dict(BASE, OUTPUT=str(tmp_path / "src.tif")))["OUTPUT"]
    plain = untagged_copy(src, str(tmp_path / "plain.tif"))  # same pixels, no generation record
    with pytest.raises(QgsProcessingException, match="not generated by rsgen_qgis"):
        processing.run("rsgen:regenerate", {"SOURCE": plain, "OUTPUT": str(tmp_path / "x.tif")})
    assert not (tmp_path / "x.tif").exists()


def test_move_to_generated_group(qgis_new_project):
    from qgis.core import QgsProject, QgsVectorLayer

    from rsgen_qgis.gis.layers import move_to_generated_group

    project = QgsProject.instance()
    layer = QgsVectorLayer("Point?crs=EPSG:4326", "p", "memory")
    project.addMapLayer(layer)
    move_to_generated_group(layer, project)
    root = project.layerTreeRoot()
    group = root.findGroup("Generated")
    assert [n.layer() for n in group.findLayers()] == [layer]
    assert root.findLayer(layer.id()).parent() is group
    assert root.children()[0] is group


@pytest.mark.parametrize("change, expected", [
    ({"WIDTH": 10, "HEIGHT": 10}, "not both"),
    ({"GSD": None}, "Give either GSD"),
    ({"GSD": None, "WIDTH": 10}, "Give either GSD"),
    ({"GSD": 0.01}, "budget"),
    ({"OUTPUT": "out.png"}, "GeoTIFF"),
    ({"EXTENT": "0,0,6233600,6235200 [EPSG:32734]"}, "empty"),
    ({"EXTENT": "9000000,9001000,6233600,6235200 [EPSG:32734]"}, "outside"),
])
def test_bad_input_raises_clear_message(tiny_setting, tmp_path, change, expected):
    params = dict(BASE, OUTPUT=str(tmp_path / "bad.tif"))
    params.update(change)
    if params.get("OUTPUT") == "out.png":
        params["OUTPUT"] = str(tmp_path / "out.png")
    params = {k: v for k, v in params.items() if v is not None}
    with pytest.raises(QgsProcessingException) as info:
        run(params)
    assert expected in str(info.value)
    assert "Traceback" not in str(info.value)
    assert not [p for p in os.listdir(tmp_path) if not p.startswith(".")]


def test_unknown_model_id_is_refused(provider, tmp_path, monkeypatch):
    """Without any discoverable package the MODEL parameter is free text; an unknown id names what exists."""
    monkeypatch.setattr("rsgen_qgis.core.runtime.models.BUNDLED_DIRS", (str(tmp_path / "none"),))
    with pytest.raises(QgsProcessingException) as info:
        run(dict(BASE, MODEL="no-such-model", OUTPUT=str(tmp_path / "m.tif")))
    assert "no-such-model" in str(info.value) and "not found" in str(info.value)


# -- the real qgis_process ----------------------------------------------------------------------------------
def qgis_process_env(plugin_path, config_dir, model_dirs=None):
    env = dict(os.environ)
    env.pop(settings.ENV_MODEL_DIRS, None)
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(plugin_path), QGIS_CUSTOM_CONFIG_PATH=str(config_dir),
               # QGIS runs /usr/bin/python3: give it the venv's packages (onnxruntime) as well
               PYTHONPATH=sysconfig.get_paths()["purelib"], PYTHONDONTWRITEBYTECODE="1")
    if model_dirs:
        env[settings.ENV_MODEL_DIRS] = str(model_dirs)
    return env


def qgis_process(env, *args, timeout=300):
    proc = subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def enable_and_generate(env, out):
    rc, log = qgis_process(env, "plugins", "enable", "rsgen_qgis")
    assert rc == 0, log
    rc, log = qgis_process(env, "run", "rsgen:generate", "--", f"EXTENT={EXTENT}", "GSD=50",
                           "PROMPT=farmland with a river", "MODEL=rsgen-tiny", "SEED=3", "STEPS=2", "GUIDANCE=2",
                           "SAMPLER=ddim", f"OUTPUT={out}")
    assert rc == 0, log
    return log


def check_output(path):
    with rasterio.open(path) as ds:  # rasterio is GDAL: what any GDAL reader sees
        assert ds.driver == "GTiff"
        assert ds.crs.to_epsg() == 32734
        assert (ds.width, ds.height, ds.count) == (32, 32, 3)
        assert ds.transform.to_gdal() == pytest.approx((453000.0, 50.0, 0.0, 6235200.0, 0.0, -50.0))
        assert ds.tags()["synthetic"] == "true"
        assert ds.read().std() > 0


@pytest.mark.slow
def test_qgis_process_runs_the_plugin(tiny_model_dir, tmp_path):
    assert os.access(QGIS_PROCESS, os.X_OK), f"{QGIS_PROCESS} is not installed"
    env = qgis_process_env(ROOT, tmp_path / "profile", tiny_model_dir)
    out = tmp_path / "cli.tif"
    log = enable_and_generate(env, out)
    assert "OUTPUT:" in log and str(out) in log
    check_output(out)


# -- the packaged zip ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_packaged_zip_installs_and_runs(tiny_model_dir, tmp_path):
    """`make package`'s zip, unzipped as QGIS does, loads and finds the model bundled inside it."""
    zpath = tmp_path / "rsgen_qgis.zip"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "package.py"), "--out", str(zpath),
                    "--models", tiny_model_dir], check=True, capture_output=True)
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
        assert {n.split("/")[0] for n in names} == {"rsgen_qgis"}, "a plugin zip needs one root folder"
        meta = zf.getinfo("rsgen_qgis/metadata.txt")
        assert (meta.external_attr >> 16) & 0o170000 == 0o100000, "metadata.txt must be a real file"
        with open(os.path.join(ROOT, "metadata.txt"), "rb") as f:
            assert zf.read(meta) == f.read()
        for needed in ("rsgen_qgis/__init__.py", "rsgen_qgis/plugin.py", "rsgen_qgis/core/engine/generate.py",
                       "rsgen_qgis/resources/icon.svg", "rsgen_qgis/models/rsgen-tiny/manifest.json",
                       "rsgen_qgis/LICENSE"):
            assert needed in names, needed
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/training/" in n
                    or "/tests/" in n]
        plugins = tmp_path / "plugins"
        zf.extractall(plugins)
    env = qgis_process_env(plugins, tmp_path / "profile")  # no RSGEN_MODEL_DIRS: the bundled model only
    rc, log = qgis_process(env, "plugins")
    assert rc == 0 and "rsgen_qgis" in log, log
    out = tmp_path / "zip.tif"
    enable_and_generate(env, out)
    check_output(out)


@pytest.mark.slow
def test_repository_zip_with_a_model_zip_beside_it(tiny_model_dir, tmp_path):
    """plugins.qgis.org's zip has no model: without one, generating names what is missing; with a model zip
    unzipped into a folder the user lists, the same request works."""
    zpath, mpath = tmp_path / "repo" / "rsgen_qgis.zip", tmp_path / "zips"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "package.py"), "--out", str(zpath), "--no-models",
                    "--models", tiny_model_dir, "--model-zips", str(mpath)], check=True, capture_output=True)
    with zipfile.ZipFile(zpath) as zf:
        assert not [n for n in zf.namelist() if "/models/" in n or n.endswith(".onnx")]
        zf.extractall(tmp_path / "plugins")
    with zipfile.ZipFile(mpath / "rsgen-tiny.zip") as zf:
        zf.extractall(tmp_path / "my models")
    env = qgis_process_env(tmp_path / "plugins", tmp_path / "profile")
    with pytest.raises(AssertionError) as missing:
        enable_and_generate(env, tmp_path / "none.tif")
    assert "'rsgen-tiny' not found" in str(missing.value) and "Install a model package" in str(missing.value)
    assert not (tmp_path / "none.tif").exists()
    env = qgis_process_env(tmp_path / "plugins", tmp_path / "profile2", tmp_path / "my models")
    out = tmp_path / "with_model.tif"
    enable_and_generate(env, out)
    check_output(out)
