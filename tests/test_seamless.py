"""Seamless inpainting fills (core.conditions.seamless): the harmonic solve against an exact one, and fills that meet the
known pixels without a step while keeping their own detail."""
import numpy as np

from rsgen_qgis.core.conditions.seamless import harmonic_fill, seamless_fill


def exact_harmonic(values, fixed):
    """Dense solve of the same discrete Laplace problem (4-neighbours, replicated edges = zero gradient)."""
    h, w = fixed.shape
    free = np.flatnonzero(~fixed.ravel())
    index = {p: i for i, p in enumerate(free)}
    out = []
    for ch in values:
        a = np.zeros((len(free), len(free)))
        b = np.zeros(len(free))
        for i, p in enumerate(free):
            r, c = divmod(p, w)
            a[i, i] = 4.0
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                rr, cc = min(max(rr, 0), h - 1), min(max(cc, 0), w - 1)  # replicated edge
                q = rr * w + cc
                if fixed.ravel()[q]:
                    b[i] += ch.ravel()[q]
                else:
                    a[i, index[q]] -= 1.0
        x = ch.ravel().copy()
        x[free] = np.linalg.solve(a, b)
        out.append(x.reshape(h, w))
    return np.stack(out)


def test_harmonic_fill_matches_an_exact_solve():
    rng = np.random.default_rng(0)
    h, w = 40, 36
    fixed = np.zeros((h, w), bool)
    fixed[[0, -1], :] = True
    fixed[:, 0] = True          # the right edge stays free: zero-gradient there
    fixed[20, 5:30] = True      # an inner wall
    values = rng.normal(size=(2, h, w))
    got = harmonic_fill(values, fixed)
    want = exact_harmonic(values, fixed)
    assert np.array_equal(got[:, fixed], values[:, fixed])
    assert np.abs(got - want).max() < 0.02 * np.abs(values).max()


def scene(h=64, w=64):
    yy, xx = np.mgrid[0:h, 0:w] / 64.0
    return np.stack([0.6 * xx - 0.3, 0.4 * yy - 0.2, 0.2 * (xx + yy) - 0.2]).astype(np.float32)


def test_fill_meets_the_border_and_keeps_its_detail():
    known = scene()
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 20:52] = 1
    texture = 0.1 * np.sign(np.sin(np.arange(64) * 1.3))[None, :, None] * np.ones((3, 64, 64), np.float32)
    fill = known + 0.5 + texture        # the model's colours: shifted by 0.5, with its own texture
    out = seamless_fill(fill, known, mask)
    m = mask > 0
    assert np.array_equal(out[:, ~m], fill[:, ~m])  # outside: untouched (the caller keeps the source there)
    # the shift is gone (the correction is the smooth part only), the texture stays
    assert abs(float((out - known - texture)[:, m].mean())) < 0.01
    assert np.abs(out - known - texture)[:, m].max() < 0.1 + 0.01  # at most the texture's own border value
    inner = (slice(None), slice(24, 40), slice(28, 44))  # 8 px from the border: the texture as generated
    assert np.corrcoef((out - known)[inner].ravel(), texture[inner].ravel())[0, 1] > 0.95
    # no step across the border: compare the jump at the hole's left edge with the scene's own column steps
    step = np.abs(out[:, 16:48, 20] - known[:, 16:48, 19]).mean()
    assert step < 0.1 * 0.5 + np.abs(texture).max()
    before = np.abs(fill[:, 16:48, 20] - known[:, 16:48, 19]).mean()
    assert step < before / 3


def test_edges_two_holes_and_trivial_masks():
    known = scene()
    fill = known - 0.3
    mask = np.zeros((64, 64), np.float32)
    mask[0:10, 0:10] = 1      # at the image corner: zero-gradient there, source on the other sides
    mask[40:50, 30:60] = 1
    out = seamless_fill(fill, known, mask)
    m = mask > 0
    assert np.abs(out - known)[:, m].max() < 0.02  # a constant shift is removed exactly, any hole shape
    assert seamless_fill(fill, known, np.zeros((64, 64))) is fill
    assert seamless_fill(fill, known, np.ones((64, 64))) is fill
