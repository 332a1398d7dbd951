"""The seam metric on synthetic images: seams raise it, a seamless texture keeps it at 1, the control stays 1."""
import numpy as np
import pytest

from rsgen_qgis.core.engine.seams import line_positions, seam_ratio, seam_report


def texture(seed, h=256, w=256, scale=4.0):
    """A smooth random RGB field (low-pass filtered noise), stationary: no preferred lines."""
    rng = np.random.default_rng(seed)
    f = np.fft.fft2(rng.standard_normal((3, h, w)))
    ky, kx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    f *= np.exp(-(kx ** 2 + ky ** 2) * (scale * np.pi) ** 2)
    img = np.real(np.fft.ifft2(f))
    return (img - img.mean()) / img.std() * 40 + 128


def tiled(period, seed=0, h=256, w=256):
    """Independent textures per tile: what naive tiling produces."""
    out = np.empty((3, h, w))
    for i, r in enumerate(range(0, h, period)):
        for j, c in enumerate(range(0, w, period)):
            out[:, r:r + period, c:c + period] = texture(seed * 1000 + i * 50 + j, h, w)[:, r:r + period,
                                                                                         c:c + period]
    return out


def test_line_positions_world_anchored():
    assert line_positions(100, 32) == [32, 64, 96]
    assert line_positions(100, 32, origin=10) == [22, 54, 86]
    assert line_positions(50, 24, offsets=(0, 8)) == [8, 24, 32, 48]


def test_smooth_texture_ratio_near_one():
    r = seam_report(texture(1), period=32)
    assert 0.9 < r.ratio < 1.1
    assert 0.9 < r.control < 1.1


def test_independent_tiles_detected():
    r = seam_report(tiled(32), period=32)
    assert r.ratio > 1.5
    assert 0.9 < r.control < 1.1
    # the wrong grid sees nothing special
    assert 0.85 < seam_report(tiled(32), period=32, offsets=(16,)).ratio < 1.15


def test_single_step_edge_raises_ratio():
    img = texture(2)
    img[:, :, 128:] += 25.0  # one brightness step along a vertical line
    assert seam_ratio(img, [128], []) > 2.0
    assert 0.7 < seam_ratio(img, [100], []) < 1.5


def test_no_lines_is_an_error():
    with pytest.raises(ValueError):
        seam_ratio(texture(3, 16, 16), [], [])


def cell_pattern(seed, factor=8, h=512, w=512):
    """A seamless texture whose gradient energy dips on every line between cells of `factor` pixels, as a latent
    decoder's output does (the column/row after each cell line pulled halfway back towards the one before)."""
    img = texture(seed, h, w, scale=0.6)
    for axis in (1, 2):
        img = np.moveaxis(img, axis, -1).copy()
        img[..., factor::factor] = 0.5 * (img[..., factor::factor] + img[..., factor - 1:-1:factor])
        img = np.moveaxis(img, -1, axis)
    return img


def test_a_latent_cell_pattern_is_not_a_seam_once_lines_are_compared_within_their_phase():
    img = cell_pattern(5)
    # window borders every 64 px lie on cell lines: against all lines they read as a soft band
    plain = seam_report(img, 64, (0,), shift=32)
    assert plain.ratio < 0.8 and plain.control < 0.8
    phased = seam_report(img, 64, (0,), shift=32, factor=8)
    assert 0.9 < phased.ratio < 1.1 and 0.9 < phased.control < 1.1
    # borders off the cell lines (a 4 px world origin) meet no dip: the phase classes hold either way
    moved = seam_report(img, 64, (0,), (4, 4), shift=32, factor=8)
    assert 0.9 < moved.ratio < 1.1 and 0.9 < moved.control < 1.1


def test_a_real_seam_on_cell_lines_still_shows_within_its_phase():
    img = cell_pattern(6)
    img[:, :, 128::128] += 25.0  # a step on every 128th line (all on cell lines)
    img[:, 128::128, :] -= 25.0
    r = seam_report(img, 128, (0,), shift=64, factor=8)
    assert r.ratio > 1.5 and 0.9 < r.control < 1.1
