"""The engine end to end with the tiny package: georeferencing, determinism, conditions, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from rsgen_qgis.core import errors
from rsgen_qgis.core.geo.geotiff import is_valid_cog
from rsgen_qgis.core.engine.generate import generate
from rsgen_qgis.core.request import Conditions, GenerationRequest

UTM = dict(extent=(453000.0, 6233600.0, 453400.0, 6233880.0), crs="EPSG:32734", gsd=4.0)


def req(tmp_path, name="out.tif", **kw):
    base = dict(UTM, prompt="dense housing by a river", seed=7, steps=3, model="rsgen-tiny",
                output=str(tmp_path / name))
    base.update(kw)
    return GenerationRequest(**base)


def files(folder):
    return sorted(os.listdir(folder))


def test_generate_writes_georeferenced_cog(tmp_path, tiny_model_dir):
    r = generate(req(tmp_path), model_dirs=[tiny_model_dir])
    with rasterio.open(r.path) as ds:
        assert (ds.width, ds.height) == (100, 70)
        assert ds.transform.to_gdal() == (453000.0, 4.0, 0.0, 6233880.0, 0.0, -4.0)
        assert ds.crs.to_epsg() == 32734
        assert ds.count == 3 and ds.dtypes[0] == "uint8"
        tags = ds.tags()
    ok, problems = is_valid_cog(r.path)
    assert ok, problems
    assert tags["synthetic"] == "true" and tags["prompt"] == "dense housing by a river"
    assert tags["seed"] == "7" and tags["model_id"] == "rsgen-tiny" and len(tags["model_sha256"]) == 64
    assert tags["sampler"] == "dpmpp_2m_sde" and tags["steps"] == "3" and tags["guidance"] == "3.0"
    assert tags["software"].startswith("rsgen_qgis ")
    assert json.loads(tags["request"])["extent"] == list(UTM["extent"])
    assert files(tmp_path) == ["out.tif"]


def test_same_request_same_pixels_other_seed_differs(tmp_path, tiny_model_dir):
    a = generate(req(tmp_path, "a.tif"), model_dirs=[tiny_model_dir]).path
    b = generate(req(tmp_path, "b.tif"), model_dirs=[tiny_model_dir]).path
    c = generate(req(tmp_path, "c.tif", seed=8), model_dirs=[tiny_model_dir]).path
    with rasterio.open(a) as A, rasterio.open(b) as B, rasterio.open(c) as C:
        assert np.array_equal(A.read(), B.read())
        assert not np.array_equal(A.read(), C.read())


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_other_samplers(tmp_path, tiny_model_dir, sampler):
    r = generate(req(tmp_path, sampler=sampler), model_dirs=[tiny_model_dir])
    assert os.path.exists(r.path)


def test_sde_sampler_is_a_function_of_seed_and_place(tmp_path, tiny_model_dir):
    """DPM-Solver++ 2M SDE adds world-anchored noise each step: the same request gives the same pixels, another
    seed other pixels, and it is not the ODE sampler's image."""
    run = lambda name, **kw: generate(req(tmp_path, name, **kw), model_dirs=[tiny_model_dir])  # the default
    a, b, c = run("a.tif"), run("b.tif"), run("c.tif", seed=8)
    ode = generate(req(tmp_path, "ode.tif", sampler="dpmpp_2m"), model_dirs=[tiny_model_dir])
    with rasterio.open(a.path) as A, rasterio.open(b.path) as B, rasterio.open(c.path) as C, \
            rasterio.open(ode.path) as O:
        assert np.array_equal(A.read(), B.read())
        assert not np.array_equal(A.read(), C.read()) and not np.array_equal(A.read(), O.read())
        assert A.tags()["sampler"] == "dpmpp_2m_sde"


def test_cancel_during_sampling_leaves_no_file(tmp_path, tiny_model_dir):
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(errors.Cancelled):
        generate(req(tmp_path), cancelled=cancelled, model_dirs=[tiny_model_dir])
    assert files(tmp_path) == []


@pytest.mark.parametrize("change, exc", [
    (dict(extent=(453000.0, 6233600.0, 453000.0, 6233880.0)), errors.ExtentError),
    (dict(extent=(0.0, 0.0, 1.0, 1.0), crs="EPSG:3857", gsd=None, width=8, height=8,
          ), None),  # valid tiny web-mercator request: must work
    (dict(extent=(-10.0, 95.0, 10.0, 100.0), crs="EPSG:4326", gsd=0.5), errors.ExtentError),
    (dict(gsd=0.01), errors.PixelBudgetError),
    (dict(model="no-such-model"), errors.ModelPackageError),
])
def test_bad_input_clear_error_no_file(tmp_path, tiny_model_dir, change, exc):
    if exc is None:
        generate(req(tmp_path, **change), model_dirs=[tiny_model_dir])
        return
    with pytest.raises(exc) as ei:
        generate(req(tmp_path, **change), model_dirs=[tiny_model_dir])
    assert str(ei.value)
    assert files(tmp_path) == []


def test_request_parameter_errors(tmp_path):
    with pytest.raises(errors.ParameterError, match="Steps"):
        req(tmp_path, steps=0)
    with pytest.raises(errors.ParameterError, match="sampler"):
        req(tmp_path, sampler="plms")


def test_unwritable_output_folder(tmp_path, tiny_model_dir):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(errors.OutputError):
        generate(req(tmp_path, output=str(tmp_path / "afile" / "out.tif")), model_dirs=[tiny_model_dir])
    with pytest.raises(errors.OutputError):
        generate(req(tmp_path, output=str(tmp_path / "missing" / "out.tif")), model_dirs=[tiny_model_dir])


def test_corrupt_package_refused_naming_file(tmp_path, tiny_package_copy):
    onnx_path = os.path.join(tiny_package_copy, "denoiser.onnx")
    data = bytearray(open(onnx_path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(onnx_path, "wb").write(bytes(data))
    with pytest.raises(errors.ModelPackageError, match="denoiser.onnx"):
        generate(req(tmp_path, model=tiny_package_copy))
    assert files(tmp_path) == ["pkgs"]


def test_manifest_contract_mismatch_refused(tmp_path, tiny_package_copy):
    mpath = os.path.join(tiny_package_copy, "manifest.json")
    m = json.load(open(mpath))
    m["graphs"]["denoiser"]["inputs"]["cond"]["shape"] = ["batch", 12345]
    json.dump(m, open(mpath, "w"))
    with pytest.raises(errors.ModelPackageError, match="denoiser.onnx.*cond"):
        generate(req(tmp_path, model=tiny_package_copy))


def test_inpainting_keeps_outside_pixels(tmp_path, tiny_model_dir):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 70, 100), dtype=np.uint8)
    mask = np.zeros((70, 100), bool)
    mask[20:50, 30:70] = True
    r = generate(req(tmp_path, conditions=Conditions(image=img, mask=mask)), model_dirs=[tiny_model_dir])
    with rasterio.open(r.path) as ds:
        out = ds.read()
    assert np.array_equal(out[:, ~mask], img[:, ~mask])
    assert not np.array_equal(out[:, mask], img[:, mask])


def test_inpainting_fill_meets_the_source_without_a_step(tmp_path, tiny_model_dir, monkeypatch):
    """The run time's seamless step (core.conditions.seamless) against the same run without it: the fill's mean colour moves
    to the source's surroundings and the step across the hole's border shrinks."""
    from rsgen_qgis.core.engine import inpaint

    yy, xx = np.mgrid[0:70, 0:100]
    img = np.stack([60 + xx, 90 + yy, 140 + 0 * xx]).astype(np.uint8)  # smooth surroundings
    mask = np.zeros((70, 100), bool)
    mask[20:50, 30:70] = True
    request = req(tmp_path, "seamless.tif", conditions=Conditions(image=img, mask=mask))
    with rasterio.open(generate(request, model_dirs=[tiny_model_dir]).path) as ds:
        done = ds.read().astype(float)
    monkeypatch.setattr(inpaint, "seamless_fill", lambda fill, known, m: fill)
    with rasterio.open(generate(request.replace(output=str(tmp_path / "raw.tif")),
                                model_dirs=[tiny_model_dir]).path) as ds:
        raw = ds.read().astype(float)

    def border_step(a):  # the colour step across the hole's border: |mean(inside row - outside row)| per side
        pairs = ((a[:, 20:50, 30], a[:, 20:50, 29]), (a[:, 20:50, 69], a[:, 20:50, 70]),
                 (a[:, 20, 30:70], a[:, 19, 30:70]), (a[:, 49, 30:70], a[:, 50, 30:70]))
        return np.mean([np.abs((i - o).mean(1)).mean() for i, o in pairs])
    src = img.astype(float)
    assert border_step(done) < border_step(raw) / 3, (border_step(done), border_step(raw))
    assert border_step(done) < 2.0  # grey levels
    shift = lambda a: np.abs(a[:, mask].mean(1) - src[:, mask].mean(1)).mean()
    assert shift(done) < shift(raw)
    assert np.array_equal(done[:, ~mask], src[:, ~mask])


def test_layout_guide_and_variation_run(tmp_path, tiny_model_dir):
    layout = np.zeros((70, 100), np.uint8)
    layout[:, 40:48] = 1
    guide = np.full((3, 18, 25), 120, np.uint8)
    img = np.full((3, 70, 100), 90, np.uint8)
    generate(req(tmp_path, "l.tif", conditions=Conditions(layout=layout, guide=guide)), model_dirs=[tiny_model_dir])
    generate(req(tmp_path, "v.tif", conditions=Conditions(image=img, strength=0.4)), model_dirs=[tiny_model_dir])
    with pytest.raises(errors.ConditionError, match="grid"):
        generate(req(tmp_path, "x.tif", conditions=Conditions(layout=layout[:10])), model_dirs=[tiny_model_dir])
    with pytest.raises(errors.ConditionError, match="class"):
        generate(req(tmp_path, "y.tif", conditions=Conditions(layout=layout + 9)), model_dirs=[tiny_model_dir])
    assert files(tmp_path) == ["l.tif", "v.tif"]


def test_no_torch_on_runtime_path(tmp_path, tiny_model_dir):
    code = (
        "import sys\n"
        "from rsgen_qgis.cli import main\n"
        f"rc = main(['generate', '--extent', '453000,6233600,453200,6233800', '--crs', 'EPSG:32734', '--gsd', '4',"
        f" '--prompt', 'forest', '--steps', '2', '--model', 'rsgen-tiny', '--model-dir', {tiny_model_dir!r},"
        f" '--quiet', '--out', {str(tmp_path / 'cli.tif')!r}])\n"
        "assert rc == 0, rc\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'qgis') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert os.path.exists(tmp_path / "cli.tif")


def test_hold_known_keeps_the_source_outside_the_mask():
    """Inpainting's x0 hook: the estimate outside the mask becomes the source, inside it stays the model's;
    a further hook (the guide's) runs after it; batched estimates broadcast over one mask."""
    from rsgen_qgis.core.engine.inpaint import hold_known

    rng = np.random.default_rng(4)
    known, x0 = rng.uniform(-1, 1, (2, 3, 8, 8)), rng.uniform(-1, 1, (2, 3, 8, 8))
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 3:7] = 1
    out = hold_known(known, mask)(x0)
    np.testing.assert_allclose(out[..., mask == 0], known[..., mask == 0], atol=1e-6)
    np.testing.assert_allclose(out[..., mask == 1], x0[..., mask == 1], atol=1e-6)
    twice = hold_known(known, mask, then=lambda z: 2 * z)(x0)
    np.testing.assert_allclose(twice, 2 * out, atol=1e-6)
