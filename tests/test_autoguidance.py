"""Autoguidance (core.engine.autoguide): a package's weak model steers each step away from its own mistakes.
The formula, the package contract (training/weak_model.py attach, the manifest schema, hostile manifests), the
doors' records (GeoTIFF tags, recall, batch recovery) and the cost estimate."""
import json
import os
import shutil
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from rsgen_qgis.core.engine import autoguide, predictors
from rsgen_qgis.core.engine.blocks import evaluations_per_window
from rsgen_qgis.core.engine.generate import generate, generate_array
from rsgen_qgis.core.errors import ModelPackageError, ParameterError
from rsgen_qgis.core.geo.geotiff import read_tags
from rsgen_qgis.core.recall import recorded_request_of
from rsgen_qgis.core.request import GenerationRequest
from rsgen_qgis.core.runtime.models import load, read_package
from rsgen_qgis.training.weak_model import NAME, attach


def _request(tmp_path, name="a.tif", **kw):
    base = dict(extent=(453000, 6233600, 453128, 6233728), crs="EPSG:32734", gsd=4.0, prompt="farmland",
                seed=3, steps=3, guidance=3.0, model="rsgen-tiny", output=str(tmp_path / name))
    return GenerationRequest(**{**base, **kw})


@pytest.mark.parametrize("bad", [0.5, 0, 10.5, float("nan"), float("inf"), True, "2"])
def test_request_refuses_scales_outside_1_to_10(tmp_path, bad):
    with pytest.raises(ParameterError, match="Autoguidance must be a number from 1 \\(off\\) to 10"):
        _request(tmp_path, autoguidance=bad)


@pytest.mark.parametrize("ok", [None, 1, 1.0, 2.5, 10])
def test_request_takes_none_and_1_to_10(tmp_path, ok):
    assert _request(tmp_path, autoguidance=ok).autoguidance == ok


class _Fake:
    """A session whose prediction is a * sample + b * cond[:, 0] (per row), recording its feeds."""

    def __init__(self, a, b):
        self.a, self.b, self.feeds = np.float32(a), np.float32(b), []

    def run(self, names, feed):
        self.feeds.append(feed)
        return [self.a * feed["sample"] + self.b * feed["cond"][:, :1, None, None]]


def test_prediction_is_guided_plus_w_minus_1_times_cond_minus_weak():
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    den, weak = _Fake(0.5, 1.0), _Fake(0.25, 3.0)
    model = SimpleNamespace(interface="rsgen", denoiser=den, weak=weak, lock=threading.Lock())
    p = SimpleNamespace(spatial=np.zeros((1, 3, 3), np.float32), cond=np.array([[2.0, 0.0]], np.float32),
                        uncond=np.array([[-1.0, 0.0]], np.float32), uncond_zero=None, autoguidance=2.5)
    group = [(0, 0, 3, 3), (0, 0, 3, 3)]
    out = predictors.predict(model, p, xs, 500.0, 4.0, group)
    c, u, w = 0.5 * xs + 2.0, 0.5 * xs - 1.0, 0.25 * xs + 6.0
    # the arithmetic is a few float32 operations on values below 10: 1e-5 is many ulps, and far below any error
    np.testing.assert_allclose(out, u + 4.0 * (c - u) + 1.5 * (c - w), rtol=0, atol=1e-5)
    # the weak model saw the conditional inputs only (both windows), at the step's timestep
    assert len(weak.feeds) == 1
    f = weak.feeds[0]
    assert f["sample"].shape == (2, 4, 3, 3) and np.array_equal(f["sample"], xs)
    assert np.all(f["cond"] == p.cond) and np.all(f["timestep"] == 500.0)
    assert predictors.evaluations(model, p) == 3
    # guidance 1: no unconditional branch; autoguidance alone is weak + w (cond - weak)
    den.feeds.clear()
    out1 = predictors.predict(model, p, xs, 500.0, 1.0, group)
    np.testing.assert_allclose(out1, w + 2.5 * (c - w), rtol=0, atol=1e-5)
    assert len(den.feeds) == 1 and len(den.feeds[0]["sample"]) == 2
    # scale 1 is off: the weak model does not run and the prediction is the guided one, bit for bit
    p.autoguidance, weak.feeds = 1.0, []
    out_off = predictors.predict(model, p, xs, 500.0, 4.0, group)
    assert not weak.feeds and np.array_equal(out_off, (u + np.float32(4.0) * (c - u)).astype(np.float32))
    assert predictors.evaluations(model, p) == 2


@pytest.fixture(scope="module")
def weak_dir(tiny_model_dir, tmp_path_factory):
    """The tiny package (rsgen-tiny) with the denoiser of another tiny package (seed 7, the same interface) attached
    as its weak model, default scale 2; and the untouched tiny package beside it as `plain`."""
    from rsgen_qgis.training.export import build_tiny_package

    root = tmp_path_factory.mktemp("weak")
    build_tiny_package(str(root / "other"), seed=7)
    dst = root / "models" / "rsgen-tiny"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), dst)
    attach(str(dst), str(root / "other" / "denoiser.onnx"), 2.0, source="a tiny package of seed 7")
    return SimpleNamespace(dir=str(root / "models"), pkg=str(dst), plain=tiny_model_dir, other=str(root / "other"))


def test_attach_lists_the_weak_graph_and_the_default(weak_dir):
    m = read_package(weak_dir.pkg).manifest
    spec = m["graphs"]["weak_denoiser"]
    assert spec["file"] == NAME and spec["source"] == "a tiny package of seed 7"
    assert spec["inputs"] == m["graphs"]["denoiser"]["inputs"]
    assert m["defaults"]["autoguidance"] == 2.0 and NAME in m["files"]
    assert not [f for f in os.listdir(weak_dir.pkg) if f.startswith(".")]  # no temporary files left


def test_generation_with_the_weak_model_and_its_records(weak_dir, tmp_path):
    req = _request(tmp_path)
    res = generate(req, model_dirs=[weak_dir.dir], providers=["CPUExecutionProvider"])
    tags = read_tags(res.path)
    assert tags["autoguidance"] == "scale 2, weak model weak_denoiser.onnx (a tiny package of seed 7)"
    assert tags["weak_denoiser_sha256"] == read_package(weak_dir.pkg).manifest["files"][NAME]["sha256"]
    assert json.loads(tags["request"])["autoguidance"] == 2.0  # left to the model: its default, as a number
    assert recorded_request_of(res.path).request["autoguidance"] == 2.0
    # three evaluations a window and step (prompt, empty prompt, weak model), in the estimate too
    assert evaluations_per_window(req, read_package(weak_dir.pkg).manifest) == 3
    assert evaluations_per_window(req.replace(autoguidance=1.0), read_package(weak_dir.pkg).manifest) == 2
    on = generate_array(req, model_dirs=[weak_dir.dir], providers=["CPUExecutionProvider"]).rgb
    off = generate_array(req.replace(autoguidance=1.0), model_dirs=[weak_dir.dir],
                         providers=["CPUExecutionProvider"]).rgb
    plain = generate_array(req, model_dirs=[weak_dir.plain], providers=["CPUExecutionProvider"]).rgb
    assert np.array_equal(off, plain)  # scale 1: exactly the package without a weak model
    assert np.abs(on.astype(int) - off.astype(int)).mean() > 1.0  # the weak model changes the image
    res_off = generate(req.replace(autoguidance=1.0, output=str(tmp_path / "off.tif")), model_dirs=[weak_dir.dir],
                       providers=["CPUExecutionProvider"])
    t_off = read_tags(res_off.path)
    assert t_off["autoguidance"] == "off" and "weak_denoiser_sha256" not in t_off
    assert json.loads(t_off["request"])["autoguidance"] == 1.0


def test_a_model_without_a_weak_model_says_why_autoguidance_is_off(weak_dir, tmp_path):
    res = generate(_request(tmp_path, autoguidance=3.0), model_dirs=[weak_dir.plain],
                   providers=["CPUExecutionProvider"])
    tags = read_tags(res.path)
    assert tags["autoguidance"] == "off: model 'rsgen-tiny' has no weaker model to guide with"
    assert json.loads(tags["request"])["autoguidance"] == 3.0  # what was asked, as class guidance records it
    r = generate(_request(tmp_path, name="b.tif"), model_dirs=[weak_dir.plain], providers=["CPUExecutionProvider"])
    assert json.loads(read_tags(r.path)["request"])["autoguidance"] is None


def _manifest_edit(src, tmp_path, edit):
    dst = tmp_path / "pk" / "rsgen-tiny"
    shutil.copytree(src, dst)
    m = json.load(open(dst / "manifest.json"))
    edit(m)
    json.dump(m, open(dst / "manifest.json", "w"))
    return str(dst)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["graphs"].pop("weak_denoiser"), r"defaults.autoguidance: autoguidance needs a weak model"),
    (lambda m: m["graphs"]["weak_denoiser"].update(int8_file=NAME), r"weak_denoiser.int8_file: a weak model is one"),
    (lambda m: m["graphs"]["weak_denoiser"]["inputs"].pop("cond"), r"weak_denoiser.inputs: a weak model takes the "),
    (lambda m: m["files"].pop(NAME), r"weak_denoiser.file: names the file 'weak_denoiser.onnx', which is not listed"),
    (lambda m: m["graphs"]["weak_denoiser"].update(file="../other/denoiser.onnx"), r"weak_denoiser.file"),
    (lambda m: m["defaults"].update(autoguidance=0.5), r"defaults.autoguidance"),
])
def test_hostile_weak_model_manifests_are_refused(weak_dir, tmp_path, edit, message):
    pkg = _manifest_edit(weak_dir.pkg, tmp_path, edit)
    with pytest.raises(ModelPackageError, match=message):
        load(pkg, providers=["CPUExecutionProvider"])


def test_a_weak_graph_that_is_not_a_denoiser_is_refused_naming_the_file(weak_dir, tmp_path):
    """The manifest lists the text encoder as the weak model with the denoiser's interface: the graph itself
    is checked when the package opens, and nothing is generated."""
    def edit(m):
        m["graphs"]["weak_denoiser"]["file"] = "text_encoder.onnx"
    pkg = _manifest_edit(weak_dir.pkg, tmp_path, edit)
    with pytest.raises(ModelPackageError, match=r"text_encoder.onnx: the graph has no input 'sample'"):
        load(pkg, providers=["CPUExecutionProvider"])
    with pytest.raises(ModelPackageError, match=r"has no input 'sample'"):
        attach(pkg, os.path.join(pkg, "text_encoder.onnx"), 2.0)
    assert json.load(open(os.path.join(pkg, "manifest.json")))["graphs"]["weak_denoiser"]["file"] == \
        "text_encoder.onnx"  # a refused attach leaves the package as it was


def test_attach_can_drop_the_fp16_graph_and_replaces_an_earlier_weak_model(weak_dir, tmp_path):
    dst = tmp_path / "pk" / "rsgen-tiny"
    shutil.copytree(weak_dir.pkg, dst)
    m = json.load(open(dst / "manifest.json"))
    shutil.copyfile(dst / "denoiser.onnx", dst / "d16.onnx")  # a stand-in fp16 graph, listed as one
    from rsgen_qgis.core.runtime.package_files import sha256_file

    m["graphs"]["denoiser"]["fp16_file"] = "d16.onnx"
    m["files"]["d16.onnx"] = {"sha256": sha256_file(str(dst / "d16.onnx"))}
    json.dump(m, open(dst / "manifest.json", "w"))
    new = attach(str(dst), os.path.join(weak_dir.plain, "rsgen-tiny", "denoiser.onnx"), 3.0, drop_fp16=True)
    assert "fp16_file" not in new["graphs"]["denoiser"] and "d16.onnx" not in new["files"]
    assert not (dst / "d16.onnx").exists() and new["defaults"]["autoguidance"] == 3.0
    assert "source" not in new["graphs"]["weak_denoiser"]
    assert load(str(dst), providers=["CPUExecutionProvider"]).weak is not None
    with pytest.raises(ValueError, match="above 1"):
        attach(str(dst), os.path.join(weak_dir.plain, "rsgen-tiny", "denoiser.onnx"), 1.0)


def test_an_unrecorded_tile_of_an_autoguided_model_is_adopted(tmp_path, weak_dir):
    """Batch recovery: the tile's tags record autoguidance 2 (the model's default, resolved), the task leaves it to
    the model; the finished tile is taken, not redone."""
    from rsgen_qgis.batch import runner, spec
    from test_batch import job

    s = spec.load(job(tmp_path, md=weak_dir.dir, name="a.yaml", out="a"))
    first = runner.run(s, workers=0, progress=False)
    mpath = os.path.join(s.output, "manifest.json")
    man = json.load(open(mpath))
    key = sorted(man["tiles"])[0]
    rec = man["tiles"].pop(key)
    assert json.loads(read_tags(os.path.join(s.output, rec["path"]))["request"])["autoguidance"] == 2.0
    json.dump(man, open(mpath, "w"))
    out = runner.run(s, workers=0, progress=False)
    assert out["tiles"][key].get("adopted") is True and out["tiles"][key]["sha256"] == rec["sha256"]
    assert sorted(out["tiles"]) == sorted(first["tiles"])


def test_package_default_and_scale_follow_the_manifest():
    with_weak = {"graphs": {"denoiser": {}, "weak_denoiser": {"file": NAME}}, "defaults": {"autoguidance": 2.0}}
    req = GenerationRequest(extent=(0, 0, 8, 8), crs="EPSG:32734", gsd=1.0, output="x.tif")
    assert autoguide.scale(req, with_weak) == 2.0
    assert autoguide.scale(req.replace(autoguidance=1.5), with_weak) == 1.5
    assert autoguide.scale(req.replace(autoguidance=3.0), {"graphs": {"denoiser": {}}}) == 1.0
    assert autoguide.recorded(None, with_weak) == 2.0 and autoguide.recorded(None, {"graphs": {}}) is None
