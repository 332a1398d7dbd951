"""Guide consistency (core.engine.guideproj): the projection itself, the samplers' x0 hook, and the engine keeping a
super-resolution guide on both paths."""
import json

import numpy as np
import pytest
import rasterio

from rsgen_qgis.core import errors
from rsgen_qgis.core.engine.guideproj import GuideProjector, area_matrix
from rsgen_qgis.core.engine.generate import generate
from rsgen_qgis.core.request import Conditions, GenerationRequest
from rsgen_qgis.core.engine.samplers import Schedule, make_sampler


def block_mean(x, f):
    c, h, w = x.shape
    return x.reshape(c, h // f, f, w // f, f).mean((2, 4))


def test_area_matrix_is_block_mean_and_weights_fractional_cells():
    a = area_matrix(4, 16)
    assert np.allclose(a.sum(1), 1) and np.allclose(a[1, 4:8], 0.25) and a[1, :4].sum() == 0
    b = area_matrix(2, 3)  # cells of 1.5 input pixels: the middle pixel is shared half and half
    assert np.allclose(b, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])


@pytest.mark.parametrize("size,guide", [((64, 48), (16, 12)), ((50, 41), (13, 10)), ((40, 40), (40, 40))])
def test_projection_meets_the_guide_and_is_the_smallest_change(size, guide):
    rng = np.random.default_rng(0)
    g = rng.uniform(-1, 1, (3,) + guide)
    pad = rng.normal(size=(3, size[0] + 6, size[1] + 5))  # a canvas padded beyond the grid
    p = GuideProjector.for_grid(g, size, factor=4, clip=None)
    out = p(pad)
    H, W = size
    assert np.abs(p.residual(out)).max() < 1e-9
    assert np.array_equal(out[:, H:], pad[:, H:]) and np.array_equal(out[:, :, W:], pad[:, :, W:])
    assert np.allclose(p(out), out)  # idempotent
    # smallest change: the correction is orthogonal to every image that leaves the guide's cells unchanged
    null = GuideProjector.for_grid(np.zeros((3,) + guide), size, 4, clip=None)(rng.normal(size=(3, H, W)))  # A null = 0
    assert abs(np.sum((out - pad)[:, :H, :W] * null)) < 1e-6 * np.abs(null).sum()
    if guide == (40, 40):  # a guide as fine as the grid is held at the model's factor, not copied pixel for pixel
        assert p.cells == (10, 10)


def test_clipping_keeps_a_valid_image_that_meets_the_guide():
    """Alternating with the value range (POCS): the estimate meets the guide and stays (nearly) in [-1, 1],
    so clipping the final image keeps it meeting the guide."""
    rng = np.random.default_rng(4)
    g, x = rng.uniform(-0.9, 0.9, (3, 8, 8)), 0.8 * rng.normal(size=(3, 32, 32))
    p = GuideProjector.for_grid(g, (32, 32), 4)
    out = p(x)
    assert np.abs(p.residual(out)).max() < 1e-9
    with_pocs = np.abs(p.residual(np.clip(out, -1, 1))).mean()
    without = np.abs(p.residual(np.clip(GuideProjector.for_grid(g, (32, 32), 4, clip=None)(x), -1, 1))).mean()
    assert with_pocs < without / 8 and without > 0.05, (with_pocs, without)


def test_whole_pixel_cells_are_met_exactly_even_at_the_range_edges():
    """x4 cells: the projection within [-1, 1] is exact, also for guide pixels at -1 or 1 (saturated roofs,
    shadows), where only an all-white / all-black block meets them; a fractional grid falls back to POCS."""
    rng = np.random.default_rng(6)
    g = rng.uniform(-1, 1, (2, 3, 8, 8))
    g[0, 0, 0, 0], g[1, 2, 3, 3] = 1.0, -1.0
    x = rng.normal(size=(2, 3, 32, 32))
    p = GuideProjector.for_grid(g, (32, 32), 4)
    out = p(x)
    assert out.min() >= -1 - 1e-8 and out.max() <= 1 + 1e-8
    assert np.abs(p.residual(out)).max() < 1e-8
    assert np.allclose(out[0, 0, :4, :4], 1.0, atol=1e-8) and np.allclose(out[1, 2, 12:16, 12:16], -1.0, atol=1e-8)
    # where the plain shift stays in range, it is the answer (the smallest change)
    inside = GuideProjector.for_grid(g * 0.2, (32, 32), 4)
    small = 0.05 * x
    assert np.allclose(inside(small), GuideProjector.for_grid(g * 0.2, (32, 32), 4, clip=None)(small))


def test_window_projector_holds_the_guides_own_cells():
    """A block of the large-area path, offset from the guide's cells: the cells wholly inside meet the guide."""
    rng = np.random.default_rng(5)
    g = rng.uniform(-1, 1, (3, 10, 12))  # a 40 x 48 grid, cells of 4 px
    p = GuideProjector.for_window(g, (40, 48), 6, -3, 24, 24, clip=None)  # rows 6..30, cols -3..21
    assert p.cells == (5, 5)  # rows: cells 2-6 (8..28); cols: cells 0-4 (0..20)
    out = p(rng.normal(size=(3, 24, 24)))
    block = out[:, 2:22, 3:23]  # grid rows 8..28, cols 0..20
    assert np.allclose(block_mean(block, 4), g[:, 2:7, 0:5])
    assert GuideProjector.for_window(g, (40, 48), 100, 0, 24, 24) is None


def test_weight_moves_part_of_the_way_and_cascade_resolution():
    rng = np.random.default_rng(1)
    g, x = rng.uniform(-1, 1, (3, 8, 8)), rng.normal(size=(3, 32, 32))
    half = GuideProjector.for_grid(g, (32, 32), 4, weight=0.5, clip=None)
    full = GuideProjector.for_grid(g, (32, 32), 4, clip=None)
    assert np.allclose(half.residual(half(x)), 0.5 * full.residual(x))
    assert GuideProjector.for_grid(g, (32, 32), 4, weight=0.0)(x) is x
    assert GuideProjector.for_grid(rng.uniform(size=(3, 32, 32)), (32, 32), 4, coarsest=(4, 4)).cells == (4, 4)
    with pytest.raises(ValueError):
        GuideProjector.for_grid(g, (32, 32), 4, weight=1.5)


SCHED = Schedule.from_config({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
                              "timestep_spacing": "trailing"})


@pytest.mark.parametrize("name", ["dpmpp_2m", "ddim", "euler", "dpmpp_2m_sde"])
def test_sampler_x0_hook(name):
    """An identity hook changes nothing; a hook that pins x0 lands the last step on it."""
    rng = np.random.default_rng(2)
    model = lambda x, t: 0.3 * x + 0.1 * np.sin(x * t / 100)  # noqa: E731

    def run(hook):
        s = make_sampler(name, SCHED, 6).with_step_noise(lambda i: np.random.default_rng(10 + i).normal(size=(3, 8, 8)))
        x = rng_x.copy() * s.init_noise_sigma
        for i, t in enumerate(s.timesteps):
            x = s.step(model(s.scale_model_input(x, i), t), i, x, hook)
        return x

    rng_x = rng.normal(size=(3, 8, 8))
    assert np.allclose(run(None), run(lambda x0: x0.copy()), atol=1e-12)
    target = rng.uniform(-1, 1, (3, 8, 8))
    # DDIM's last step lands on alphas_cumprod[0] (not 1) with 'trailing' spacing: within its sqrt(1 - a0) noise
    assert np.allclose(run(lambda x0: target), target, atol=1e-4 if name != "ddim" else 2e-2)


UTM = dict(extent=(453000.0, 6233600.0, 453256.0, 6233792.0), crs="EPSG:32734", width=64, height=48)


def sr_request(tmp_path, name, model="rsgen-tiny", **kw):
    guide = np.random.default_rng(3).integers(30, 220, (3, 12, 16)).astype(np.uint8)
    return GenerationRequest(**UTM, output=str(tmp_path / name), prompt="", seed=5, steps=4, model=model,
                             conditions=Conditions(guide=guide), **kw), guide


@pytest.mark.parametrize("large", [False, True])
def test_generated_image_keeps_the_guide(tmp_path, tiny_model_dir, large):
    """Super-resolution: the output's 4 x 4 means are the guide's pixels (to rounding and clipping); with
    consistency 0 the model only reads the guide (here an untrained model, so they are far apart)."""
    errs = {}
    for w in (1.0, 0.0):
        r, guide = sr_request(tmp_path, f"sr{w}{large}.tif", guide_consistency=w, large_area=large)
        res = generate(r, model_dirs=[tiny_model_dir])
        with rasterio.open(res.path) as ds:
            img = ds.read().astype(np.float64)
        errs[w] = np.abs(block_mean(img, 4) - guide).mean()
    assert errs[1.0] < 1.0 and errs[0.0] > 20, errs


def test_guide_consistency_is_checked(tmp_path):
    for bad in (-0.1, 1.5, True, "1"):
        with pytest.raises(errors.ParameterError, match="Guide consistency"):
            sr_request(tmp_path, "x.tif", guide_consistency=bad)


@pytest.mark.parametrize("size,guide", [((64, 48), (16, 12)), ((50, 41), (13, 10))])
def test_smooth_projection_meets_the_guide_without_cell_edges(size, guide):
    """The latent models' consistency (on decoded pixels): the cell means are met exactly without clipping and
    to a small residual with it, and the correction is smooth: it changes as much between two pixels of one
    cell as across a cell edge, where the nearest-image projection puts all its change on the edges."""
    rng = np.random.default_rng(4)
    g = rng.uniform(-0.7, 0.7, (3,) + guide)
    x = np.clip(rng.normal(0, 0.3, (3,) + size), -1, 1)
    exact = GuideProjector.for_grid(g, size, 4, clip=None)
    assert np.abs(exact.residual(exact.smooth(x))).max() < 1e-9
    p = GuideProjector.for_grid(g, size, 4)
    y = p.smooth(x)
    assert y.min() >= -1 and y.max() <= 1 and np.abs(p.residual(y)).mean() < 0.01
    assert np.abs(p.residual(x)).mean() > 0.2  # the guide was far from met before
    if size[1] % 4 == 0:
        for name, c in (("smooth", exact.smooth(x) - x), ("nearest", exact.project(x) - x)):
            d = np.abs(np.diff(c, axis=-1))
            edge, inner = d[..., 3::4].mean(), np.delete(d, np.s_[3::4], axis=-1).mean()
            assert (edge < 1.5 * inner) == (name == "smooth"), (name, edge, inner)
    half = GuideProjector.for_grid(g, size, 4, weight=0.5, clip=None)
    assert np.allclose(half.smooth(x), x + 0.5 * (exact.smooth(x) - x))


@pytest.mark.parametrize("large", [False, True])
def test_latent_model_keeps_the_guide_after_decoding(tmp_path, tiny_latent_dir, large):
    """A latent model's steps see only the guide's encoding; the decoded image is then held to the guide (its
    4 x 4 means, to rounding and clipping) on both paths, and left as drawn with consistency 0."""
    errs = {}
    for w in (1.0, 0.0):
        r, guide = sr_request(tmp_path, f"lat{w}{large}.tif", "rsgen-tiny-latent", guide_consistency=w,
                              large_area=large)
        res = generate(r, model_dirs=[tiny_latent_dir])
        with rasterio.open(res.path) as ds:
            img = ds.read().astype(np.float64)
            tag = ds.tags().get("guide_consistency", "")
        errs[w] = np.abs(block_mean(img, 4) - guide).mean()
        assert tag.startswith("after decoding") == (w > 0), tag
    assert errs[1.0] < 1.5 and errs[0.0] > 10, errs


@pytest.mark.parametrize("model,large,ratio", [("rsgen-tiny", False, 0.5), ("rsgen-tiny", True, 0.5),
                                               ("rsgen-tiny-latent", False, 0.75), ("rsgen-tiny-latent", True, 0.75)])
def test_superresolution_strength_starts_from_the_upsampled_guide(tmp_path, tiny_model_dir, tiny_latent_dir,
                                                                  model, large, ratio):
    """Super-resolution below strength 1 starts from the guide upsampled to the grid (SDEdit), not from noise:
    with consistency off (so only the start holds the result to the guide) the 4 x 4 means stay nearer the
    guide than from noise, on both paths, and the strength is recorded. The denoisers are untrained: the pixel
    one's estimate moves little at the kept steps; the latent one's random v-prediction moves the estimate by
    sqrt(1 - alpha_bar) ~ 0.4 of its size at t ~ 200 (measured 31 vs 58 grey levels), hence the looser ratio."""
    errs, steps = {}, {}
    for s in (1.0, 0.2):
        r, guide = sr_request(tmp_path, f"s{s}{model}{large}.tif", model, guide_consistency=0.0, large_area=large)
        r = r.replace(steps=10, conditions=Conditions(guide=guide, strength=s))
        res = generate(r, model_dirs=[tiny_model_dir, tiny_latent_dir])
        with rasterio.open(res.path) as ds:
            img = ds.read().astype(np.float64)
            steps[s] = json.loads(ds.tags()["request"])["conditions"]
        errs[s] = np.abs(block_mean(img, 4) - guide).mean()
    assert errs[0.2] < ratio * errs[1.0], errs
    assert steps[0.2].get("strength") == 0.2 and "strength" not in steps[1.0], steps


def test_start_strength_applies_to_variation_and_superresolution_only():
    img, g = np.zeros((3, 8, 8), np.uint8), np.zeros((3, 2, 2), np.uint8)
    assert Conditions(image=img, strength=0.4).start_strength() == 0.4
    assert Conditions(guide=g, strength=0.4).start_strength() == 0.4
    assert Conditions(image=img, mask=np.ones((8, 8), bool), strength=0.4).start_strength() == 1.0
    assert Conditions(strength=0.4).start_strength() == 1.0


def test_superresolution_footprints_start_from_the_upsampled_guide(tmp_path, tiny_model_dir):
    """The start image of a super-resolution below strength 1 is the guide as the model reads it (upsampled to the
    canvas), on the single-request footprint and on every large-area block's; at strength 1 there is none."""
    from rsgen_qgis.core.engine import blocks, single
    from rsgen_qgis.core.geo.georef import grid_for_request
    from rsgen_qgis.core.runtime.models import load

    model = load("rsgen-tiny", [tiny_model_dir], providers=["CPUExecutionProvider"])
    for s in (0.5, 1.0):
        r, guide = sr_request(tmp_path, "x.tif")
        r = r.replace(conditions=Conditions(guide=guide, strength=s), large_area=True)
        grid = grid_for_request(r)
        fp = single.footprint(r, model, grid)
        assert fp.strength == s and (fp.known is fp.guide if s < 1 else fp.known is None)
        runner = blocks._BlockRunner(r, model, grid, blocks.BlockLayout.for_model(model, None), 8,
                                     lambda: False, lambda n: None)
        bfp = runner.footprint(0, 0)
        assert bfp.strength == s and (bfp.known is bfp.guide if s < 1 else bfp.known is None)
