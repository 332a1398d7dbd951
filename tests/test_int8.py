"""The int8 CPU graph of a pixel package (training/quantize.py): calibrated from the package's own sampling runs,
recorded in the manifest with its sha256, chosen on the CPU unless precision "fp32" is asked for, and named in
the GeoTIFF's provenance tags."""
import json
import os
import shutil

import numpy as np
import onnx
import pytest
import rasterio

from rsgen_qgis.core.errors import ModelPackageError, ParameterError
from rsgen_qgis.core.runtime.models import denoiser_variant, load, read_package
from rsgen_qgis.core.engine.generate import generate
from rsgen_qgis.core.request import GenerationRequest
from rsgen_qgis.training.quantize import INT8_FILE, add_int8, output_conv, trajectory_feeds

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def int8_dir(tiny_model_dir, tmp_path_factory):
    """A copy of the tiny package with an int8 graph calibrated on its own sampling runs (no real data)."""
    root = tmp_path_factory.mktemp("int8")
    pkg = str(root / "rsgen-tiny")
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), pkg)
    c = read_package(pkg).manifest["conditions"]
    spatial = np.zeros((2, c["spatial_channels"], 32, 32), np.float32)
    cases = [dict(prompts=["dense housing", ""], spatial=spatial, seeds=[1, 2], guidance=3.0, meta=dict(gsd_m=4.0))]
    feeds = trajectory_feeds(pkg, cases, steps=4)
    assert len(feeds) == 4 and feeds[0]["sample"].shape[0] == 4  # one batch per step: cond + uncond twins
    add_int8(pkg, feeds)
    return str(root)


def _req(tmp_path, name, **kw):
    base = dict(extent=(453000, 6233600, 453128, 6233728), crs="EPSG:32734", gsd=4.0, prompt="dense housing",
                seed=3, steps=3, model="rsgen-tiny", output=str(tmp_path / name))
    return GenerationRequest(**{**base, **kw})


def test_manifest_records_the_int8_graph(int8_dir):
    pkg = read_package(os.path.join(int8_dir, "rsgen-tiny"))
    spec = pkg.manifest["graphs"]["denoiser"]
    assert spec["int8_file"] == INT8_FILE and pkg.manifest["files"][INT8_FILE]["sha256"]
    assert spec["int8"]["calibration_feeds"] == 4
    g = onnx.load(pkg.file(INT8_FILE)).graph
    ops = {n.op_type for n in g.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # every convolution takes dequantized int8 weights, but the output projection, which stays fp32
    fp32_src = pkg.file(spec["file"])
    last = output_conv(fp32_src)
    assert spec["int8"]["fp32_kept"] == [last]
    produced_by = {o: n for n in g.node for o in n.output}
    inits = {i.name for i in g.initializer}
    for n in (n for n in g.node if n.op_type == "Conv"):
        w = produced_by.get(n.input[1])
        if n.name == last:
            assert n.input[1] in inits, "the output convolution must keep fp32 weights"
        else:
            assert w is not None and w.op_type == "DequantizeLinear", n.name


def test_variant_choice():
    spec = {"file": "d.onnx", "fp16_file": "d16.onnx", "int8_file": "d8.onnx"}
    assert denoiser_variant(spec, "CPUExecutionProvider") == "int8"
    assert denoiser_variant(spec, "CUDAExecutionProvider") == "fp16"
    assert denoiser_variant(spec, "CPUExecutionProvider", "fp32") == "fp32"
    assert denoiser_variant(spec, "CUDAExecutionProvider", "fp32") == "fp32"
    assert denoiser_variant({"file": "d.onnx"}, "CPUExecutionProvider") == "fp32"
    assert denoiser_variant({"file": "d.onnx", "int8_file": "d8.onnx"}, "CUDAExecutionProvider") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        denoiser_variant(spec, "CPUExecutionProvider", "int4")


def test_cpu_runs_int8_unless_fp32_is_asked(int8_dir, tmp_path):
    fast = load("rsgen-tiny", [int8_dir], CPU)
    exact = load("rsgen-tiny", [int8_dir], CPU, precision="fp32")
    assert (fast.variant, exact.variant) == ("int8", "fp32") and fast.denoiser is not exact.denoiser
    man = fast.package.manifest
    assert fast.variant_sha256 == man["files"][INT8_FILE]["sha256"]
    a = generate(_req(tmp_path, "a.tif"), model_dirs=[int8_dir], providers=CPU)
    b = generate(_req(tmp_path, "b.tif", precision="fp32"), model_dirs=[int8_dir], providers=CPU)
    assert (a.denoiser_graph, b.denoiser_graph) == ("int8", "fp32")
    with rasterio.open(a.path) as ds:
        ta, pa = ds.tags(), ds.read()
    with rasterio.open(b.path) as ds:
        tb, pb = ds.tags(), ds.read()
    assert ta["denoiser_graph"] == "int8" and ta["denoiser_graph_sha256"] == man["files"][INT8_FILE]["sha256"]
    assert float(ta["denoiser_fp32_below_timestep"]) == 150 and "denoiser_fp32_below_timestep" not in tb
    assert tb["denoiser_graph"] == "fp32" and tb["denoiser_graph_sha256"] == ta["model_sha256"]
    assert json.loads(ta["request"])["precision"] == "auto" and json.loads(tb["request"])["precision"] == "fp32"
    assert not np.array_equal(pa, pb)  # a different graph really ran
    # the same request again: the same bytes (the int8 graph is deterministic too)
    c = generate(_req(tmp_path, "c.tif"), model_dirs=[int8_dir], providers=CPU)
    with rasterio.open(c.path) as ds:
        assert np.array_equal(ds.read(), pa)


def test_package_without_int8_runs_fp32(tiny_model_dir, tmp_path):
    r = generate(_req(tmp_path, "p.tif"), model_dirs=[tiny_model_dir], providers=CPU)
    assert r.denoiser_graph == "fp32"


def test_tampered_int8_graph_is_refused(int8_dir, tmp_path):
    pkg = tmp_path / "rsgen-tiny"
    shutil.copytree(os.path.join(int8_dir, "rsgen-tiny"), pkg)
    with open(pkg / INT8_FILE, "r+b") as f:
        f.seek(200)
        f.write(b"\0\0\0\0")
    with pytest.raises(ModelPackageError, match=INT8_FILE):
        load(str(pkg), providers=CPU, precision="fp32")  # every listed file is checked, used or not


def test_unknown_precision_is_a_parameter_error(tmp_path):
    with pytest.raises(ParameterError, match="precision"):
        _req(tmp_path, "x.tif", precision="int4")


def test_last_steps_run_the_exact_graph(int8_dir, tmp_path):
    """Below the manifest's fp32_below_timestep the fp32 graph runs (int8 ranges are too coarse for the final
    detail); above it the int8 graph. Checked on the timesteps a real 20-step run sends."""
    from recording import Recorder

    from rsgen_qgis.core.runtime.models import SteppedDenoiser

    m = load("rsgen-tiny", [int8_dir], CPU)
    d = m.denoiser
    assert isinstance(d, SteppedDenoiser) and d.exact_below == 150
    fast, exact = Recorder(d.fast), Recorder(d.exact)
    d.fast, d.exact = fast, exact
    try:
        generate(_req(tmp_path, "s.tif", steps=20, guidance=1.0), model_dirs=[int8_dir], providers=CPU)
    finally:
        d.fast, d.exact = fast.inner, exact.inner
    t_fast = sorted({float(f["timestep"][0]) for f in fast.feeds})
    t_exact = sorted({float(f["timestep"][0]) for f in exact.feeds})
    assert t_exact and t_fast and max(t_exact) < 150 <= min(t_fast)
    assert len(t_fast) + len(t_exact) == 20


def test_estimate_counts_both_graphs(int8_dir):
    from rsgen_qgis.core.engine.blocks import seconds_per_window_eval, window_seconds_per_sample

    m = load("rsgen-tiny", [int8_dir], CPU)
    r = GenerationRequest(extent=(0, 0, 128, 128), crs="EPSG:32734", gsd=4.0, steps=20, guidance=1.0,
                          model="rsgen-tiny", output="x.tif")
    fast, exact = seconds_per_window_eval(m, timestep=500.0), seconds_per_window_eval(m, timestep=10.0)
    total = window_seconds_per_sample(r, m)
    n_exact = 3  # trailing spacing, 20 steps: 149, 99, 49 are below 150
    assert total == pytest.approx((20 - n_exact) * fast + n_exact * exact)


@pytest.mark.parametrize("precision, graph", [(None, "int8"), ("fp32", "fp32")])
def test_batch_job_precision(int8_dir, tmp_path, precision, graph):
    """A job spec's `precision` reaches every tile (and the default is the fast graph)."""
    import yaml

    from rsgen_qgis.batch import runner, spec

    d = {"output": "out", "crs": "EPSG:32734", "gsd": 4.0, "model": "rsgen-tiny", "model_dirs": [int8_dir],
         "seed": 5, "steps": 2, "guidance": 1.0, "tile_px": 48,
         "aois": {"bboxes": [{"bbox": [453130.0, 6233600.0, 453300.0, 6233700.0], "prompt": "farmland"}]}}
    if precision:
        d["precision"] = precision
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(d))
    man = runner.run(spec.load(str(tmp_path / "job.yaml")), workers=0, progress=False)
    assert man["tiles"]
    for rec in man["tiles"].values() if isinstance(man["tiles"], dict) else man["tiles"]:
        with rasterio.open(os.path.join(str(tmp_path / "out"), rec["path"])) as ds:
            tags = ds.tags()
        assert tags["denoiser_graph"] == graph
        assert json.loads(tags["request"])["precision"] == (precision or "auto")
