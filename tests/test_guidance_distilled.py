"""Guidance-distilled models (training/distill.py): the guidance scale is a condition value, one evaluation per
step, a scale outside the distilled range is refused before anything is written; the distillation target is
formed by the run time's own unconditional rule."""
import dataclasses
import os

import numpy as np
import pytest

from rsgen_qgis.core.conditions.encoding import (GUIDANCE_RANGE, CondLayout, cond_vectors, manifest_conditions,
                                        spatial_layout, unconditional)
from rsgen_qgis.core.errors import ConditionError
from rsgen_qgis.core.geo.georef import grid_for_request
from rsgen_qgis.core.engine.blocks import evaluations_per_window
from rsgen_qgis.core.runtime.models import load
from rsgen_qgis.core.engine.generate import generate
from rsgen_qgis.core.engine.single import sample_canvas
from rsgen_qgis.core.request import Conditions, GenerationRequest
from recording import Recorder

META = dict(gsd_m=4.0, lon=None, lat=None, date=None, has_inpaint=False, has_guide=False)


@pytest.fixture(scope="module")
def distilled_dir(tmp_path_factory):
    from rsgen_qgis.training.export import build_tiny_package

    root = tmp_path_factory.mktemp("distilled")
    build_tiny_package(str(root / "rsgen-tiny"), guidance_input=True)
    return str(root)


def _request(tmp_path, guidance, prompt="dense residential"):
    layout = np.zeros((32, 32), np.uint8)
    layout[:, 10:16] = 1
    return GenerationRequest(extent=(453000, 6233600, 453128, 6233728), crs="EPSG:32734", gsd=4.0, prompt=prompt,
                             seed=2, steps=3, guidance=guidance, model="rsgen-tiny",
                             output=str(tmp_path / "d.tif"), conditions=Conditions(layout=layout))


def test_manifest_and_layout():
    cm = manifest_conditions(8, guidance_input=True)
    lay = CondLayout.from_manifest(cm)
    assert lay.guidance_range == GUIDANCE_RANGE and cm["cond_dim"] == CondLayout(8).dim + 1
    assert cm["cond_layout"]["guidance"] == [CondLayout(8).dim, 1]
    assert CondLayout.from_manifest(manifest_conditions(8)).guidance_range is None
    with pytest.raises(ConditionError, match="condition vector has"):
        CondLayout.from_manifest(dict(cm, cond_dim=cm["cond_dim"] + 2))


def test_guidance_is_a_condition_value():
    cm = manifest_conditions(8, guidance_input=True)
    lay = CondLayout.from_manifest(cm)
    g = lay.segments["guidance"][0]
    assert cond_vectors(lay, None, guidance=1.0, **META)[0, g] == 0.0  # no guidance encodes as 0
    assert cond_vectors(lay, None, guidance=3.0, **META)[0, g] == pytest.approx(0.5)
    # the rest of the vector is what a guided model gets
    assert np.array_equal(cond_vectors(lay, None, guidance=3.0, **META)[:, :g], cond_vectors(CondLayout(8), None, **META))
    with pytest.raises(ConditionError, match="built in"):
        cond_vectors(lay, None, guidance=8.0, **META)
    with pytest.raises(ConditionError, match="none was given"):
        cond_vectors(lay, None, **META)
    # never an unconditional branch
    assert unconditional(lay, cm, np.ones((1, 8), np.float32), 3.0, has_layout=True, **META) is None


def test_one_evaluation_per_step(tmp_path, distilled_dir):
    base = load("rsgen-tiny", [distilled_dir])
    rec = Recorder(base.denoiser)
    model = dataclasses.replace(base, denoiser=rec)
    req = _request(tmp_path, 4.0)
    sample_canvas(req, model, grid_for_request(req), lambda f, m: None, lambda: False)
    g = model.package.manifest["conditions"]["cond_layout"]["guidance"][0]
    assert len(rec.feeds) == req.steps and all(len(f["sample"]) == 1 for f in rec.feeds)
    assert all(f["cond"][0, g] == pytest.approx(0.75) for f in rec.feeds)
    assert evaluations_per_window(req, model.package.manifest) == 1
    # the scale changes the image (it is an input, not ignored)
    rec.feeds.clear()
    a = sample_canvas(req, model, grid_for_request(req), lambda f, m: None, lambda: False)
    b = sample_canvas(req.replace(guidance=2.0), model, grid_for_request(req), lambda f, m: None, lambda: False)
    assert not np.array_equal(a[0], b[0])


def test_scale_outside_range_refused_nothing_written(tmp_path, distilled_dir):
    req = _request(tmp_path, 9.0)
    with pytest.raises(ConditionError, match="1 to 5"):
        generate(req, model_dirs=[distilled_dir])
    assert not os.listdir(tmp_path)


def test_distillation_target_uses_the_run_time_rule():
    torch = pytest.importorskip("torch")
    from rsgen_qgis.training.distill import student_from, unconditional_batch
    from rsgen_qgis.training.export import tiny_config
    from rsgen_qgis.training.model import Denoiser

    lay = CondLayout(32)
    cm = manifest_conditions(32)
    emb = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
    kw = dict(META, has_layout=True)
    c = cond_vectors(lay, emb, **kw)
    u, zero = unconditional(lay, cm, emb, 3.0, **kw)
    spatial = np.random.default_rng(1).random((1, 13, 8, 8)).astype(np.float32)
    su, cu = unconditional_batch(torch.from_numpy(spatial), torch.from_numpy(c), lay, tuple(spatial_layout()["layout"]))
    assert np.array_equal(cu.numpy(), u)
    o, n = zero
    expect = spatial.copy(); expect[:, o:o + n] = 0
    assert np.array_equal(su.numpy(), expect)
    # the student starts as the teacher, whatever the scale
    torch.manual_seed(0)
    teacher = Denoiser(tiny_config()).eval()
    student = student_from(teacher).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10.0, 700.0])
    sp, cond = torch.randn(2, 13, 32, 32), torch.randn(2, teacher.cfg.cond_dim)
    with torch.no_grad():
        ref = teacher(x, t, sp, cond)
        for w in (0.0, 1.0):
            assert torch.allclose(student(x, t, sp, torch.cat([cond, torch.full((2, 1), w)], 1)), ref, atol=1e-6)
    assert student.cfg.guidance_input and student.cfg.cond_dim == teacher.cfg.cond_dim + 1
