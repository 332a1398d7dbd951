"""The two-stage generation: a package's coarse base model (training/cascade_base.py), its loading and
verification, the cascade using it on both paths, and the coarse pass taking the layout."""
import json
import os
import shutil

import numpy as np
import pytest
import rasterio
import torch

from rsgen_qgis.core import errors
from rsgen_qgis.core.engine.cascade import coarse_layout
from rsgen_qgis.core.conditions.encoding import NO_LAYOUT
from rsgen_qgis.core.geo.georef import Grid
from rsgen_qgis.core.runtime.models import cascade_factor, load_base, read_package
from rsgen_qgis.core.engine.generate import generate
from rsgen_qgis.core.request import Conditions, GenerationRequest

X0, Y0 = 453008.0, 6233600.0  # on the 16 m coarse grid


@pytest.fixture(scope="module")
def two_stage_dir(tiny_model_dir, tmp_path_factory):
    """rsgen-tiny (32 px) plus an 8 px random-weights base model: factor 4."""
    import dataclasses

    from rsgen_qgis.training.cascade_base import add_cascade_base
    from rsgen_qgis.training.export import tiny_config
    from rsgen_qgis.training.model import Denoiser
    from rsgen_qgis.training.train import SCHEDULE

    root = tmp_path_factory.mktemp("two_stage")
    pkg = root / "rsgen-tiny"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), pkg)
    torch.manual_seed(1)
    cfg = dataclasses.replace(tiny_config(), tile=8)
    ckpt = root / "base.pt"
    torch.save({"ema": Denoiser(cfg).state_dict(), "config": cfg.to_dict(), "schedule": dict(SCHEDULE),
                "step": 3, "elapsed_s": 1.0}, ckpt)
    add_cascade_base(str(pkg), str(ckpt), (1.0, 80.0))
    return str(root)


def req(tmp_path, name, **kw):
    base = dict(crs="EPSG:32734", gsd=4.0, prompt="houses by a river", seed=3, steps=2, model="rsgen-tiny",
                output=str(tmp_path / name), extent=(X0, Y0, X0 + 240.0, Y0 + 160.0))
    base.update(kw)
    return GenerationRequest(**base)


def test_base_is_recorded_verified_and_opened(two_stage_dir, tmp_path):
    pkg = read_package(os.path.join(two_stage_dir, "rsgen-tiny"))
    assert cascade_factor(pkg) == 4 and "base_denoiser.onnx" in pkg.manifest["files"]
    base = load_base("rsgen-tiny", [two_stage_dir], ["CPUExecutionProvider"])
    assert base.package.manifest["tile"]["size"] == 8 and base.package.id == "rsgen-tiny/base"
    assert base.text_encoder is not None  # shares the package's text encoder file
    # a damaged base graph is named when the package is loaded at all
    bad = tmp_path / "m"
    shutil.copytree(two_stage_dir, bad)
    with open(bad / "rsgen-tiny" / "base_denoiser.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    with pytest.raises(errors.ModelPackageError, match="base_denoiser.onnx"):
        generate(req(tmp_path, "x.tif"), model_dirs=[str(bad)])
    assert not os.path.exists(tmp_path / "x.tif")
    with pytest.raises(errors.ModelPackageError, match="no coarse base model"):
        load_base(_plain_copy(tmp_path, two_stage_dir), [], ["CPUExecutionProvider"])


def _plain_copy(tmp_path, two_stage_dir):
    """A copy of the package without its base (manifest entry removed)."""
    dst = tmp_path / "plain" / "rsgen-tiny"
    shutil.copytree(os.path.join(two_stage_dir, "rsgen-tiny"), dst)
    m = json.loads((dst / "manifest.json").read_text())
    del m["cascade_base"]
    (dst / "manifest.json").write_text(json.dumps(m))
    return str(dst)


@pytest.mark.parametrize("large", [False, True])
def test_cascade_at_the_base_factor_uses_the_base(two_stage_dir, tmp_path, large):
    r = generate(req(tmp_path, "c.tif", cascade=4, large_area=large), model_dirs=[two_stage_dir])
    with rasterio.open(r.path) as ds:
        tags = ds.tags()
        assert (ds.width, ds.height) == (60, 40)
    assert tags["cascade_coarse_model"] == "rsgen-tiny/base"
    # another factor: the model itself makes the coarse pass
    r2 = generate(req(tmp_path, "c2.tif", cascade=2, large_area=large), model_dirs=[two_stage_dir])
    with rasterio.open(r2.path) as ds:
        assert ds.tags()["cascade_coarse_model"] == "rsgen-tiny"


def test_cascade_passes_the_layout_to_the_coarse_pass(two_stage_dir, tmp_path, monkeypatch):
    from rsgen_qgis.core.engine import single

    seen = []
    real = single.sample_canvas

    def spy(r, model, grid, *a, **k):
        seen.append((r.conditions.layout, grid))
        return real(r, model, grid, *a, **k)

    monkeypatch.setattr(single, "sample_canvas", spy)
    layout = np.full((40, 60), 3, np.uint8)
    layout[:, :20] = 5
    generate(req(tmp_path, "l.tif", cascade=4, conditions=Conditions(layout=layout)), model_dirs=[two_stage_dir])
    coarse, cgrid = seen[0]
    assert coarse.shape == (cgrid.height, cgrid.width) == (10, 15)
    assert (coarse[:, :5] == 5).all() and (coarse[:, 5:] == 3).all()


def test_coarse_layout_majority_and_no_layout():
    grid = Grid("EPSG:32734", (0.0, 1.0, 0.0, 8.0, 0.0, -1.0), 8, 8)
    cgrid = Grid("EPSG:32734", (0.0, 4.0, 0.0, 12.0, 0.0, -4.0), 2, 3)  # one row of coarse pixels above the grid
    ids = np.zeros((8, 8), np.uint8)
    ids[:, :3] = 1               # left coarse column: 3 of 4 columns are road
    ids[4:, 4:] = NO_LAYOUT      # bottom-right coarse pixel: nothing known
    out = coarse_layout(ids, grid, cgrid)
    assert out.tolist() == [[NO_LAYOUT, NO_LAYOUT], [1, 0], [1, NO_LAYOUT]]


@pytest.mark.parametrize("large", [False, True])
def test_fine_pass_keeps_the_coarse_pixels(two_stage_dir, tmp_path, monkeypatch, large):
    """Guide consistency on the coarse image's own pixels: each 4 x 4 block of the output averages to the coarse
    pixel above it (both grids world-anchored, so the blocks line up)."""
    from rsgen_qgis.core.engine import cascade

    coarse = []
    real = cascade.upsample_to
    monkeypatch.setattr(cascade, "upsample_to", lambda c, cg, g: coarse.append(c) or real(c, cg, g))
    r = generate(req(tmp_path, "k.tif", cascade=4, large_area=large, steps=3), model_dirs=[two_stage_dir])
    with rasterio.open(r.path) as ds:
        img = ds.read().astype(np.float64)
    means = img.reshape(3, 10, 4, 15, 4).mean((2, 4))
    assert np.abs(means - coarse[0]).mean() < 1.0


def test_evaluation_two_stage_generator(two_stage_dir):
    """evaluate --two-stage: base tiles at a quarter of the size (4x the GSD, the layout by majority), then the
    fine tiles held to them."""
    from rsgen_qgis.training.tilegen import TwoStageGenerator

    gen = TwoStageGenerator(os.path.join(two_stage_dir, "rsgen-tiny"), 2, 3.0)
    seen = []
    real = gen.base.run

    def spy(p, sp, s, b=32, **m):
        seen.append((sp, m, real(p, sp, s, b, **m)))
        return seen[-1][2]

    gen.base.run = spy
    sp = np.zeros((2, gen.C, 32, 32), np.float32)
    o, k = gen.slay["layout"]
    sp[:, o + 4] = 1.0  # vegetation everywhere
    sp[:, o + 4, :, :12], sp[:, o + 5, :, :12] = 0.0, 1.0  # water in the first 12 columns
    out = gen.run(["a forest", ""], sp, [1, 2], gsd_m=5.0, has_layout=True)
    csp, meta, coarse = seen[0]
    assert out.shape == (2, 3, 32, 32) and csp.shape == (2, gen.C, 8, 8) and meta["gsd_m"] == 20.0
    assert (csp[:, o + 5, :, :3] == 1).all() and (csp[:, o + 4, :, 3:] == 1).all()
    means = out.astype(np.float64).reshape(2, 3, 8, 4, 8, 4).mean((3, 5))
    assert np.abs(means - coarse).mean() < 1.0
