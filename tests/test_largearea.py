"""Large-area path (world-anchored blocks, streamed output) with the tiny package."""
import json
import os

import numpy as np
import pytest
import rasterio

from rsgen_qgis.core import errors
from rsgen_qgis.core.geo.geotiff import is_valid_cog
from rsgen_qgis.core.engine.blocks import BlockLayout, fade
from rsgen_qgis.core.engine.generate import generate
from rsgen_qgis.core.request import Conditions, GenerationRequest

X0, Y0, GSD = 453000.0, 6233600.0, 4.0


def px_req(tmp_path, name, c0, r0, w, h, **kw):
    """A request for world-pixel columns [c0, c0+w) and rows [r0, r0+h) counted from (X0, Y0) (rows go up)."""
    base = dict(crs="EPSG:32734", gsd=GSD, prompt="houses by a river", seed=3, steps=1, guidance=1.0,
                model="rsgen-tiny", large_area=True, block_windows=2, output=str(tmp_path / name),
                extent=(X0 + GSD * c0, Y0 + GSD * r0, X0 + GSD * (c0 + w), Y0 + GSD * (r0 + h)))
    base.update(kw)
    return GenerationRequest(**base)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read()


def test_fade_is_a_partition_of_unity():
    w = fade(96, 32)
    assert np.allclose(w[64:] + w[:32], 1.0, atol=1e-6)
    assert w.min() > 0 and np.all(w[32:64] == 1)


def test_block_layout_footprint_is_whole_windows():
    lay = BlockLayout.for_manifest({"tile": {"size": 64}}, 2)
    assert (lay.overlap, lay.stride, lay.band, lay.span, lay.block) == (12, 52, 16, 168, 152)
    assert lay.windows_per_block == 9
    # window starts and ends inside a block, modulo the pitch: 0, 52, 104 and 64, 116, 168 (= 16)
    assert lay.window_edges == (0, 16, 52, 64, 104, 116)
    with pytest.raises(ValueError):
        BlockLayout(64, 12, 150, 16)  # footprint 166 is not 64 + whole strides of 52
    with pytest.raises(ValueError):
        BlockLayout(64, 12, 56, 60)  # band wider than the pitch: blocks two apart would overlap


def test_block_range_covers_every_footprint():
    lay = BlockLayout(32, 8, 192)
    for lo, n in [(0, 1), (-5, 10), (100, 500), (191, 2), (-1000, 37)]:
        ks = list(lay.block_range(lo, n))
        for k in range(ks[0] - 3, ks[-1] + 4):
            meets = k * 192 < lo + n and k * 192 + lay.span > lo
            assert meets == (k in ks), (lo, n, k)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_sde"])
def test_overlapping_requests_identical_in_overlap(tmp_path, tiny_model_dir, sampler):
    # two fused steps: what a window sees depends on its neighbours; the SDE sampler's step noise is world-anchored
    kw = dict(steps=2 if sampler == "dpmpp_2m" else 3, sampler=sampler)
    a = generate(px_req(tmp_path, "a.tif", 0, 0, 130, 90, **kw), model_dirs=[tiny_model_dir])
    b = generate(px_req(tmp_path, "b.tif", 80, -40, 120, 90, **kw), model_dirs=[tiny_model_dir])
    A, B = read(a.path), read(b.path)
    # overlap: world cols 80..130, rows (counted upwards) 0..50; row 0 of an image is its top (north) edge
    oa = A[:, 90 - 50:90, 80:130]
    ob = B[:, 0:50, 0:50]
    assert oa.shape == ob.shape == (3, 50, 50)
    assert np.array_equal(oa, ob)
    assert oa.std() > 5  # real image content, not a constant
    c = generate(px_req(tmp_path, "c.tif", 80, -40, 120, 90, seed=4, **kw), model_dirs=[tiny_model_dir])
    assert not np.array_equal(read(c.path)[:, 0:50, 0:50], ob)


@pytest.mark.parametrize("kw", [{}, {"sampler": "dpmpp_2m_sde", "steps": 3}])
def test_neighbours_join_like_one_request(tmp_path, tiny_model_dir, kw):
    # tiny tile 32: 76 px block pitch, 8 px bands; the join at column 80 lies inside the band [76, 84)
    lay = BlockLayout.for_manifest({"tile": {"size": 32}}, 2)
    assert (lay.block, lay.band) == (76, 8)
    whole = read(generate(px_req(tmp_path, "w.tif", -10, 0, 200, 30, **kw), model_dirs=[tiny_model_dir]).path)
    left = read(generate(px_req(tmp_path, "l.tif", -10, 0, 90, 30, **kw), model_dirs=[tiny_model_dir]).path)
    right = read(generate(px_req(tmp_path, "r.tif", 80, 0, 110, 30, **kw), model_dirs=[tiny_model_dir]).path)
    assert np.array_equal(np.concatenate([left, right], axis=2), whole)


def test_memory_band_does_not_grow_with_height(tmp_path, tiny_model_dir):
    short = generate(px_req(tmp_path, "s.tif", 0, 0, 20, 200), model_dirs=[tiny_model_dir])
    tall = generate(px_req(tmp_path, "t.tif", 0, 0, 20, 400), model_dirs=[tiny_model_dir])
    lay = tall.stats.layout
    assert tall.stats.blocks > short.stats.blocks
    # the accumulator holds at most one block footprint of rows, however tall the area
    assert tall.stats.max_band_rows == short.stats.max_band_rows == lay.span
    assert read(tall.path).shape == (3, 400, 20)


def test_budget_lifted_cog_tags_and_no_temp_files(tmp_path, tiny_model_dir):
    with pytest.raises(errors.PixelBudgetError):
        generate(px_req(tmp_path, "x.tif", 0, 0, 100, 50, large_area=False, pixel_budget=1000),
                 model_dirs=[tiny_model_dir])
    r = generate(px_req(tmp_path, "big.tif", 0, 0, 100, 50, pixel_budget=1000), model_dirs=[tiny_model_dir])
    ok, problems = is_valid_cog(r.path)
    assert ok, problems
    with rasterio.open(r.path) as ds:
        tags = ds.tags()
        assert ds.transform.to_gdal() == (X0, GSD, 0.0, Y0 + 50 * GSD, 0.0, -GSD)
    made = json.loads(tags["large_area"])
    assert tags["synthetic"] == "true" and (made["block"], made["band"], made["overlap"]) == (76, 8, 6)
    assert sorted(os.listdir(tmp_path)) == ["big.tif"]
    assert r.stats.windows == r.stats.blocks * r.stats.layout.windows_per_block


def test_cancel_leaves_no_file(tmp_path, tiny_model_dir):
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 40

    with pytest.raises(errors.Cancelled):
        generate(px_req(tmp_path, "c.tif", 0, 0, 300, 300), cancelled=cancelled, model_dirs=[tiny_model_dir])
    assert os.listdir(tmp_path) == []


def test_conditions(tmp_path, tiny_model_dir):
    layout = np.zeros((50, 100), np.uint8)
    layout[:, 40:48] = 1
    guide = np.full((3, 13, 25), 120, np.uint8)
    r = generate(px_req(tmp_path, "l.tif", 0, 0, 100, 50, guidance=3.0,
                        conditions=Conditions(layout=layout, guide=guide)), model_dirs=[tiny_model_dir])
    plain = read(generate(px_req(tmp_path, "p.tif", 0, 0, 100, 50, guidance=3.0), model_dirs=[tiny_model_dir]).path)
    assert not np.array_equal(read(r.path), plain)
    img = np.random.default_rng(0).integers(0, 256, (3, 50, 100), dtype=np.uint8)
    mask = layout > 0  # inpainting on the large-area path (it used to be refused): the source outside the mask
    out = read(generate(px_req(tmp_path, "m.tif", 0, 0, 100, 50, conditions=Conditions(image=img, mask=mask)),
                        model_dirs=[tiny_model_dir]).path)
    assert np.array_equal(out[:, ~mask], img[:, ~mask]) and not np.array_equal(out[:, mask], img[:, mask])
    with pytest.raises(errors.ConditionError, match="grid"):
        generate(px_req(tmp_path, "n.tif", 0, 0, 100, 50, conditions=Conditions(layout=layout[:10])),
                 model_dirs=[tiny_model_dir])
    assert sorted(os.listdir(tmp_path)) == ["l.tif", "m.tif", "p.tif"]


def test_estimate_matches_the_run(tmp_path, tiny_model_dir):
    from rsgen_qgis.core.engine.blocks import estimate_request

    r = px_req(tmp_path, "e.tif", 0, 0, 100, 50, steps=1)
    n, secs = estimate_request(r, [tiny_model_dir])
    res = generate(r, model_dirs=[tiny_model_dir])
    assert n == res.stats.windows and n * r.steps == res.stats.window_evals
    assert 0 < secs < 600
    small = r.replace(large_area=False)
    n2, _ = estimate_request(small, [tiny_model_dir])
    assert n2 == 4 * 2  # canvas 100 x 52 (padded to the tile multiple): 4 x 2 windows of 32 px, stride 24


@pytest.mark.parametrize("large", [False, True])
def test_cascade_guides_the_fine_pass(tmp_path, tiny_model_dir, large):
    from rsgen_qgis.core.engine import cascade

    calls = []
    real = cascade.upsample_to

    def spy(coarse, cgrid, grid):
        out = real(coarse, cgrid, grid)
        calls.append((coarse, cgrid, grid, out))
        return out

    cascade.upsample_to, restore = spy, cascade.upsample_to
    try:
        r = generate(px_req(tmp_path, "c.tif", 2, 0, 60, 40, cascade=4, large_area=large),
                     model_dirs=[tiny_model_dir])
    finally:
        cascade.upsample_to = restore
    plain = generate(px_req(tmp_path, "p.tif", 2, 0, 60, 40, large_area=large), model_dirs=[tiny_model_dir])
    coarse, cgrid, _, _ = calls[0]
    assert cgrid.pixel_size == (16.0, 16.0)
    assert cgrid.width == 15 and cgrid.height == 10  # 240 x 160 m at 16 m
    assert cgrid.bounds == plain.grid.bounds
    if large:  # each block takes its part of the guide: the full-resolution guide is never made
        assert len(calls) == r.stats.blocks
        assert all(g.shape == (3, r.stats.layout.span, r.stats.layout.span) for _, _, _, g in calls)
    else:
        guide = calls[0][3]
        assert len(calls) == 1 and guide.shape == (3, 40, 60)
        # fine pixels up to the first coarse pixel centre take that pixel's value; the guide varies like it
        assert np.array_equal(guide[:, 1, 1], coarse[:, 0, 0])
        assert guide.std() > 0
    assert not np.array_equal(read(r.path), read(plain.path))
    with rasterio.open(r.path) as ds:
        assert '"cascade": 4' in ds.tags()["request"]
    with pytest.raises(errors.ParameterError, match="cascade"):
        px_req(tmp_path, "x.tif", 0, 0, 10, 10, cascade=20)
