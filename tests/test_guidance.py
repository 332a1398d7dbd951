"""Classifier-free guidance per condition: the unconditional branch drops the prompt and the layout (when the
model's manifest lists them in guidance_drops), so a layout steers as strongly as a prompt."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from rsgen_qgis.core.errors import ModelPackageError
from rsgen_qgis.core.conditions.encoding import CondLayout, cond_vectors, manifest_conditions, unconditional
from rsgen_qgis.core.geo.georef import grid_for_request
from rsgen_qgis.core.engine.blocks import evaluations_per_window
from rsgen_qgis.core.runtime.models import load
from rsgen_qgis.core.engine.single import sample_canvas
from rsgen_qgis.core.request import Conditions, GenerationRequest
from recording import Recorder

CM = manifest_conditions(8)
CL = CondLayout(8)
META = dict(gsd_m=4.0, lon=None, lat=None, date=None, has_inpaint=False, has_guide=False)


def test_unconditional_drops_prompt_and_layout():
    emb = np.ones((1, 8), np.float32)
    u, zero = unconditional(CL, CM, emb, 3.0, has_layout=True, **META)
    seg = CL.segments
    assert zero == tuple(CM["spatial_layout"]["layout"])
    assert u[0, seg["text_present"][0]] == 0 and not u[0, slice(*[seg["text"][0], sum(seg["text"])])].any()
    assert u[0, seg["layout_present"][0]] == 0
    # everything else is the conditional vector
    c = cond_vectors(CL, None, has_layout=False, **META)
    assert np.array_equal(u, c)


def test_unconditional_only_what_is_present_and_guided():
    assert unconditional(CL, CM, None, 3.0, has_layout=False, **META) is None      # nothing to drop
    assert unconditional(CL, CM, None, 1.0, has_layout=True, **META) is None       # guidance 1: one branch
    text_only = dict(CM, guidance_drops=["text"])                                  # an older manifest
    assert unconditional(CL, text_only, None, 3.0, has_layout=True, **META) is None
    u, zero = unconditional(CL, text_only, np.ones((1, 8), np.float32), 3.0, has_layout=True, **META)
    assert zero is None and u[0, CL.segments["layout_present"][0]] == 1


def _layout_request(tmp_path, guidance):
    layout = np.zeros((32, 32), np.uint8)
    layout[:, 10:16] = 1  # a road
    return GenerationRequest(extent=(453000, 6233600, 453128, 6233728), crs="EPSG:32734", gsd=4.0, prompt="",
                             seed=2, steps=2, guidance=guidance, model="rsgen-tiny",
                             output=str(tmp_path / "g.tif"), conditions=Conditions(layout=layout))


def test_layout_alone_is_guided(tmp_path, tiny_model_dir):
    base = load("rsgen-tiny", [tiny_model_dir])
    rec = Recorder(base.denoiser)
    model = dataclasses.replace(base, denoiser=rec)
    req = _layout_request(tmp_path, 3.0)
    grid = grid_for_request(req)
    sample_canvas(req, model, grid, lambda f, m: None, lambda: False)
    o, n = model.package.manifest["conditions"]["spatial_layout"]["layout"]
    lp = model.package.manifest["conditions"]["cond_layout"]["layout_present"][0]
    for f in rec.feeds:
        half = len(f["sample"]) // 2
        assert np.array_equal(f["sample"][:half], f["sample"][half:])
        assert f["spatial"][:half, o:o + n].any() and not f["spatial"][half:, o:o + n].any()
        assert (f["cond"][:half, lp] == 1).all() and (f["cond"][half:, lp] == 0).all()
    assert evaluations_per_window(req, model.package.manifest) == 2
    # guidance 1: one branch only, the layout kept
    rec.feeds.clear()
    req1 = req.replace(guidance=1.0)
    sample_canvas(req1, model, grid, lambda f, m: None, lambda: False)
    assert all(f["spatial"][:, o:o + n].any(axis=(1, 2, 3)).all() for f in rec.feeds)
    assert all((f["cond"][:, lp] == 1).all() for f in rec.feeds)
    assert evaluations_per_window(req1, model.package.manifest) == 1


def _with_interval(tmp_path, tiny_model_dir, interval):
    root = tmp_path / "models"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), root / "rsgen-tiny")
    mpath = root / "rsgen-tiny" / "manifest.json"
    m = json.loads(mpath.read_text())
    m.setdefault("defaults", {})["guidance_interval"] = interval
    mpath.write_text(json.dumps(m))
    return str(root)


def test_guidance_interval_guides_only_inside(tmp_path, tiny_model_dir):
    """A package's guidance interval: the steps whose timestep lies inside it run both branches, the others the
    conditional branch alone (one evaluation), and the image differs from one guided at every step."""
    req = _layout_request(tmp_path, 3.0).replace(steps=4, sampler="ddim")
    grid = grid_for_request(req)
    base = load("rsgen-tiny", [tiny_model_dir])
    rec_all = Recorder(base.denoiser)
    z_all = sample_canvas(req, dataclasses.replace(base, denoiser=rec_all), grid, lambda f, m: None, lambda: False)
    ts = [float(f["timestep"][0]) for f in rec_all.feeds]
    assert len(set(ts)) == 4 and all(len(f["sample"]) == 2 for f in rec_all.feeds)
    lo, hi = sorted(ts)[1] - 0.5, sorted(ts)[2] + 0.5  # the two middle steps
    model = load("rsgen-tiny", [_with_interval(tmp_path, tiny_model_dir, [lo, hi])])
    rec = Recorder(model.denoiser)
    z = sample_canvas(req, dataclasses.replace(model, denoiser=rec), grid, lambda f, m: None, lambda: False)
    sizes = {float(f["timestep"][0]): len(f["sample"]) for f in rec.feeds}
    assert sizes == {t: (2 if lo <= t <= hi else 1) for t in ts}
    lp = model.package.manifest["conditions"]["cond_layout"]["layout_present"][0]
    assert all((f["cond"][:, lp] == 1).all() for f in rec.feeds if len(f["sample"]) == 1)  # the conditional one
    assert not np.array_equal(z_all[0], z[0])  # the RGB images


def test_guidance_interval_checked(tmp_path, tiny_model_dir):
    for i, bad in enumerate(([500, 100], [100], "100-500", [-1, 5])):
        with pytest.raises(ModelPackageError, match="guidance_interval"):
            load("rsgen-tiny", [_with_interval(tmp_path / f"bad{i}", tiny_model_dir, bad)])


def test_guidance_interval_recorded_in_tags(tmp_path, tiny_model_dir):
    """The interval is a manifest setting, outside the denoiser graph whose sha256 the tags carry: a GeoTIFF made
    with one records it, and one made without has no such tag."""
    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.geo.geotiff import read_tags

    with_iv = _with_interval(tmp_path / "iv", tiny_model_dir, [350, 999])
    req = _layout_request(tmp_path, 3.0)
    generate(req.replace(output=str(tmp_path / "iv.tif")), model_dirs=[with_iv])
    assert json.loads(read_tags(str(tmp_path / "iv.tif"))["guidance_interval"]) == [350, 999]
    generate(req.replace(output=str(tmp_path / "all.tif")), model_dirs=[tiny_model_dir])
    assert "guidance_interval" not in read_tags(str(tmp_path / "all.tif"))
