"""Seamless inpainting fills: a smooth (harmonic) correction that makes the fill meet the known pixels at the
mask's border, keeping the fill's own detail inside.

The model's fill of a hole comes out in its own colours: it meets the source with a step at the border (rsgen-base,
held-out scenes: a luma step 2.7 times as sharp as the scene's own lines, `make eval`). The membrane of
Farbman et al. 2009 ("Coordinates for instant image cloning"; the same result as Perez et al. 2003's seamless
cloning with no gradient across the border) removes it: the difference between the source just outside the hole
and the fill just inside it is spread over the hole as the smoothest field that takes those values on the
border (Laplace's equation), and added to the fill. Low frequencies bend towards the surroundings; edges and
texture inside stay as generated. numpy only: a coarse-to-fine red-black SOR solve on the mask's bounding box.
"""
from __future__ import annotations

import numpy as np

RING_RADIUS = 3      # the border's difference is averaged along the ring over this radius (px): its texture stays out
COARSEST = 16        # side (px) below which a level starts from the mean boundary value
ITERATIONS = 30      # red-black SOR sweeps per level (the coarser level supplies the low frequencies)
OMEGA = 1.7          # over-relaxation


def _avg4(x: np.ndarray) -> np.ndarray:
    """Mean of the 4 neighbours, edges replicated (a zero-gradient border where the hole meets the image edge)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    return 0.25 * (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:])


def _box_mean(values: np.ndarray, weight: np.ndarray, radius: int) -> np.ndarray:
    """Weighted mean of `values` over a (2r+1)^2 box, counting only pixels where weight is 1 (cumulative sums)."""
    def box(a):
        k = 2 * radius + 1
        p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(radius + 1, radius), (radius + 1, radius)])
        c = p.cumsum(-1).cumsum(-2)
        return c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]
    return box(values * weight) / np.maximum(box(weight), 1e-6)


def harmonic_fill(values: np.ndarray, fixed: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """The field equal to `values` where `fixed` is True and harmonic (each pixel the mean of its 4 neighbours)
    elsewhere. values (C, H, W) float, fixed (H, W) bool with at least one True."""
    c, h, w = values.shape
    if max(h, w) > COARSEST:
        hh, ww = (h + 1) // 2, (w + 1) // 2
        pv = np.zeros((c, hh * 2, ww * 2), values.dtype)
        pf = np.zeros((hh * 2, ww * 2), values.dtype)
        pv[:, :h, :w] = np.where(fixed, values, 0.0)
        pf[:h, :w] = fixed
        cnt = pf.reshape(hh, 2, ww, 2).sum((1, 3))
        sums = pv.reshape(c, hh, 2, ww, 2).sum((2, 4))
        coarse_fixed = cnt > 0
        coarse_vals = np.where(coarse_fixed, sums / np.maximum(cnt, 1), 0.0).astype(values.dtype)
        coarse = harmonic_fill(coarse_vals, coarse_fixed, iterations)
        x = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)[:, :h, :w]
    else:
        x = np.broadcast_to(values[:, fixed].mean(axis=1)[:, None, None], (c, h, w)).copy()
    x = np.where(fixed, values, x)
    yy, xx = np.indices((h, w))
    red = (yy + xx) % 2 == 0
    colours = (red & ~fixed, ~red & ~fixed)
    for _ in range(iterations):
        for free in colours:  # red-black Gauss-Seidel with over-relaxation: each colour sees the other's update
            x = np.where(free, x + values.dtype.type(OMEGA) * (_avg4(x) - x), x)
    return x


def seamless_fill(fill: np.ndarray, known: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The fill with the membrane correction inside the mask (1 = regenerated); outside it, the fill unchanged
    (the caller keeps the source there). fill, known (C, H, W) float; mask (H, W). The correction on the border
    ring (known pixels 4-adjacent to the hole) is the source there minus the mean of the fill at the ring pixel's
    neighbours inside the hole (the step the eye sees), averaged along the ring over RING_RADIUS px."""
    m = np.asarray(mask) > 0.5
    if not m.any() or m.all():
        return fill
    given = fill
    fill = np.asarray(fill, np.float32)
    known = np.asarray(known, np.float32)
    up, down = np.zeros_like(m), np.zeros_like(m)
    up[:-1] = m[1:]; down[1:] = m[:-1]
    left, right = np.zeros_like(m), np.zeros_like(m)
    left[:, :-1] = m[:, 1:]; right[:, 1:] = m[:, :-1]
    ring = ~m & (up | down | left | right)
    # the fill's own value at each ring pixel: the mean over its neighbours inside the hole
    inside = m.astype(np.float32)
    pf = np.pad(fill * inside, ((0, 0), (1, 1), (1, 1)))
    pm = np.pad(inside, 1)
    nsum = pf[:, :-2, 1:-1] + pf[:, 2:, 1:-1] + pf[:, 1:-1, :-2] + pf[:, 1:-1, 2:]
    ncnt = pm[:-2, 1:-1] + pm[2:, 1:-1] + pm[1:-1, :-2] + pm[1:-1, 2:]
    extension = nsum / np.maximum(ncnt, 1)
    # solve on the hole's bounding box (+1 px for the ring); only ring pixels are fixed
    rows, cols = np.nonzero(m)
    r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, m.shape[0])
    c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, m.shape[1])
    box_ring = ring[r0:r1, c0:c1]
    box_m = m[r0:r1, c0:c1]
    # the step to remove, averaged along the ring: the colour mismatch, not the texture of the source's edge
    # (a building outline, a shadow), which the membrane would otherwise smear into the fill
    diff = _box_mean((known - extension)[:, r0:r1, c0:c1], box_ring.astype(np.float32), RING_RADIUS)
    # only the ring is fixed: every hole pixel's neighbours are hole or ring pixels, so the other known pixels
    # of the box (free in the solve) never reach the hole's values
    corr = harmonic_fill(np.where(box_ring, diff, np.float32(0)), box_ring)
    out = np.array(given, copy=True)  # outside the hole: the caller's values and type, untouched
    out[:, r0:r1, c0:c1] = np.where(box_m, fill[:, r0:r1, c0:c1] + corr, out[:, r0:r1, c0:c1])
    return out


__all__ = ["harmonic_fill", "seamless_fill"]
