"""Contrast-preserving block cross-fade (core.engine.blockblend): exact where one block covers, variance kept in the
bands, low frequencies blended linearly, order-independent of the request."""
import numpy as np
import pytest

from rsgen_qgis.core.engine.blockblend import BlockBlender, box_blur, correlation, split
from rsgen_qgis.core.engine.blocks import fade
from rsgen_qgis.core.engine.seams import seam_report

B, T = 96, 32
L = B + T


def run(blocks, rows=(0, 2), cols=(0, 2), col0=0, row0=0, H=None, W=None):
    """Blend blocks {(kr, kc): (3, L, L)} over world rows [row0, row0+H) and cols [col0, col0+W)."""
    H = H or (rows[1] - 1) * B + L - row0
    W = W or (cols[1] - 1) * B + L - col0
    bl = BlockBlender(B, L, fade(L, T), W, col0)
    out = []
    for kr in range(*rows):
        g0, g1 = max(kr * B, row0), min(kr * B + L, row0 + H)
        for kc in range(*cols):
            h0, h1 = max(kc * B, col0), min(kc * B + L, col0 + W)
            if g1 > g0 and h1 > h0:
                bl.add(kr, kc, blocks[(kr, kc)], (g0, g1), (h0, h1))
        final = row0 + H if kr == rows[1] - 1 else min((kr + 1) * B, row0 + H)
        n = final - bl.top
        if n > 0:
            out.append(bl.take(n))
    return np.concatenate(out, axis=1), bl


def noise_blocks(seed, shape=(2, 2), rho=0.0, smooth=1):
    """Blocks cut from per-block fields: correlation `rho` with a shared world field."""
    rng = np.random.default_rng(seed)
    world = rng.standard_normal((3, shape[0] * B + T, shape[1] * B + T)).astype(np.float32)
    out = {}
    for kr in range(shape[0]):
        for kc in range(shape[1]):
            own = rng.standard_normal((3, L, L)).astype(np.float32)
            shared = world[:, kr * B:kr * B + L, kc * B:kc * B + L]
            out[(kr, kc)] = 0.3 * (np.sqrt(rho) * shared + np.sqrt(1 - rho) * own)
    return out


def test_box_blur_keeps_constants_and_split_sums_back():
    x = np.random.default_rng(0).standard_normal((3, 40, 50)).astype(np.float32)
    assert np.allclose(box_blur(np.full((3, 20, 20), 0.25, np.float32)), 0.25, atol=1e-6)
    lo, hi = split(x)
    assert np.allclose(lo + hi, x, atol=1e-6)
    assert hi.std() > 0.8 * x.std() and abs(lo.mean() - x.mean()) < 0.05


def test_correlation():
    a = np.random.default_rng(1).standard_normal(1000)
    assert correlation(a, a) == pytest.approx(1.0)
    assert correlation(a, -a) == -0.5  # clipped
    assert correlation(a, np.zeros(1000)) == 1.0


def test_identical_blocks_come_back_exactly():
    img = np.random.default_rng(2).uniform(-1, 1, (3, 2 * B + T, 2 * B + T)).astype(np.float32)
    blocks = {(r, c): img[:, r * B:r * B + L, c * B:c * B + L] for r in range(2) for c in range(2)}
    out, bl = run(blocks)
    assert np.abs(out - img).max() < 1e-3  # float32 sums; 1e-3 is an eighth of one 8-bit level
    assert bl.mean_rho == pytest.approx(1.0, abs=0.01)  # the blur sees each block's own edge


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_band_keeps_the_detail_energy_where_a_plain_crossfade_loses_it(rho):
    blocks = noise_blocks(3, (1, 2), rho)
    out, bl = run(blocks, rows=(0, 1), cols=(0, 2))
    band_centre = B + T // 2
    inside = slice(T + 8, B - 8)  # block (0, 0) alone, away from its ramps
    # detail energy per column (high-pass), band centre vs block interiors
    _, hi = split(out)
    e = (hi ** 2).mean(axis=(0, 1))
    ratio = e[band_centre - 2:band_centre + 2].mean() / e[inside].mean()
    assert 0.85 < ratio < 1.15, ratio
    # a plain cross-fade of the same blocks loses energy there
    w = fade(L, T)
    plain = np.zeros_like(out)
    plain[:, :, :L] += blocks[(0, 0)] * w
    plain[:, :, B:] += blocks[(0, 1)] * w
    _, hp = split(plain)
    ep = (hp ** 2).mean(axis=(0, 1))
    assert ep[band_centre - 2:band_centre + 2].mean() / ep[inside].mean() < 0.5 + 0.5 * rho + 0.1
    assert bl.mean_rho == pytest.approx(rho, abs=0.1)


def test_low_frequencies_are_blended_linearly_without_overshoot():
    a = np.full((3, L, L), -0.4, np.float32)
    b = np.full((3, L, L), 0.6, np.float32)
    out, _ = run({(0, 0): a, (0, 1): b}, rows=(0, 1), cols=(0, 2))
    row = out[0, L // 2]
    assert row.min() >= -0.4 - 1e-5 and row.max() <= 0.6 + 1e-5
    assert np.all(np.diff(row) >= -1e-6)  # monotone ramp


def test_seam_metric_sees_no_soft_band():
    blocks = noise_blocks(4, (3, 3), rho=0.5)
    blocks = {k: box_blur(v, 1, 1) for k, v in blocks.items()}  # some spatial structure, as images have
    out, _ = run(blocks, rows=(0, 3), cols=(0, 3))
    r = seam_report(out, B, (T // 2,), shift=B // 2)
    assert 0.9 < r.ratio < 1.1, r


def test_a_sub_request_gives_the_same_pixels():
    blocks = noise_blocks(5, (3, 3), rho=0.5)
    full, _ = run(blocks, rows=(0, 3), cols=(0, 3))
    # world rows [70, 250) x cols [40, 200): the blocks meeting it, in the same order
    part, _ = run(blocks, rows=(0, 3), cols=(0, 3), row0=70, col0=40, H=180, W=160)
    assert np.array_equal(part, full[:, 70:250, 40:200])


def texture_blocks(seed, shape=(3, 3), fine=0.5):
    """Blocks as a latent package's decoder paints them: shapes shared with the world (a smooth field, correlated
    between neighbours) under a fine texture each block paints anew (white noise, uncorrelated)."""
    rng = np.random.default_rng(seed)
    world = box_blur(rng.standard_normal((3, shape[0] * B + T, shape[1] * B + T)).astype(np.float32), 2, 2) * 3
    return {(kr, kc): 0.3 * (world[:, kr * B:kr * B + L, kc * B:kc * B + L]
                             + fine * rng.standard_normal((3, L, L)).astype(np.float32))
            for kr in range(shape[0]) for kc in range(shape[1])}


@pytest.mark.parametrize("seed", [6, 7])
def test_fine_texture_keeps_its_energy_in_the_bands_with_its_own_normaliser(seed):
    """One normaliser for all the detail is set by the correlated shapes and leaves the uncorrelated fine texture
    soft mid-band (ratio ~0.91 here); a normaliser per detail band (RADII) brings the band lines back near 1."""
    from rsgen_qgis.core.engine.blockblend import RADII, RADIUS
    from rsgen_qgis.core.engine.seams import seam_ratio

    blocks = texture_blocks(seed)
    H = 2 * B + L
    band = [p for p in range(1, H) if any(k * B < p < k * B + T for k in (1, 2))]
    control = [p + B // 2 for p in band]
    ratios = {}
    for radii in (RADII, (RADIUS,)):
        bl = BlockBlender(B, L, fade(L, T), H, 0, radii)
        rows = []
        for kr in range(3):
            for kc in range(3):
                bl.add(kr, kc, blocks[(kr, kc)], (kr * B, kr * B + L), (kc * B, kc * B + L))
            rows.append(bl.take((H if kr == 2 else (kr + 1) * B) - bl.top))
        out = np.concatenate(rows, axis=1)
        ratios[radii] = seam_ratio(out, band, band, control, control)
        assert 0.97 < seam_ratio(out, control, control, band, band) < 1.03  # no band there: the reference holds
        if radii == RADII:
            fine, coarse = bl.mean_rho_bands
            assert fine < 0.1 < 0.6 < coarse  # the texture is new in each block, the shapes are shared
    assert 0.95 < ratios[RADII] < 1.05, ratios
    assert ratios[(RADIUS,)] < 0.94, ratios
