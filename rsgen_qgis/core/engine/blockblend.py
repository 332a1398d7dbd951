"""Contrast-preserving cross-fade of world-anchored blocks (core.engine.blocks).

A plain cross-fade a*A + b*B (a + b = 1) of two images that agree only in part lowers the contrast of the
band: where A and B are fine detail with correlation rho, the blend keeps a fraction a^2 + b^2 + 2ab*rho of
their variance (0.75 at the band centre for rho = 0.5), a soft stripe the seam metric sees (ratio 0.75).
So each block is split into a low-pass part (box blur, linear cross-fade: colours and large shapes meet
smoothly, nothing overshoots) and the detail left over, which is cross-faded with the same weights and then
divided by the standard deviation that blend has:

    out = sum_k w_k lo_k / sum_k w_k  +  sum_k w_k hi_k / sqrt(sum_k sum_l w_k w_l rho_kl)

(rho_kk = 1; variance-preserving blending as in Heitz & Neyret 2018, "High-performance by-example noise using
a histogram-preserving blending operator", with the correlation measured instead of assumed 0). rho_kl is the
correlation of the two blocks' detail over their whole shared footprint, which both blocks always cover in
full, so it is a pure function of the two blocks: every pixel stays the same function of the same world blocks
whatever the request, and overlapping requests stay byte-identical. Where a single block covers a pixel (w = 1)
the output is that block exactly.

The detail is split into bands (RADII: finer than a 5 px triangle, and from there to the low-pass), each with
its own correlation and normaliser. Blocks whose shapes agree but whose finest texture is painted anew in each
(uncorrelated fine detail under correlated coarse detail) otherwise get one normaliser set by the coarse part,
which leaves the fine texture, where most gradient energy is, soft mid-band: seam ratio ~0.91 on such bands
with one normaliser, ~0.98 with one per band (tests/test_blockblend.py). rsgen-base-1's blocks agree more than
that (detail correlation in the bands 0.90 fine, 0.99 coarse, 1024 px at 2 m) and read the same either way.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

RADIUS = 4  # box radius; two passes (a 17 px triangle): detail is what varies faster than ~16 px
RADII = (1, RADIUS)  # detail bands: below a 5 px triangle (1 px texture), and from there to the low-pass


def box_blur(img: np.ndarray, radius: int = RADIUS, passes: int = 2) -> np.ndarray:
    """Separable box blur of (C, H, W), edges replicated; float32."""
    x = np.asarray(img, np.float32)
    k = 2 * radius + 1
    for _ in range(passes):
        for axis in (1, 2):
            pad = [(0, 0)] * 3
            pad[axis] = (radius + 1, radius)
            c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float64)
            hi = np.take(c, np.arange(k, c.shape[axis]), axis=axis)
            lo = np.take(c, np.arange(0, c.shape[axis] - k), axis=axis)
            x = ((hi - lo) / k).astype(np.float32)
    return x


def split(img: np.ndarray, radius: int = RADIUS) -> Tuple[np.ndarray, np.ndarray]:
    """(low-pass, detail) of an image, detail = image - low-pass."""
    lo = box_blur(img, radius)
    return lo, np.asarray(img, np.float32) - lo


def split_bands(img: np.ndarray, radii: Tuple[int, ...] = RADII) -> Tuple[np.ndarray, List[np.ndarray]]:
    """(low-pass, [detail bands, finest first]) of an image: the low-pass is the blur at radii[-1], band k what
    the blur at radii[k] removes beyond the blur at radii[k - 1]; low-pass + the bands = the image."""
    x = np.asarray(img, np.float32)
    bands, prev = [], x
    for r in radii:
        lo = box_blur(x, r)
        bands.append(prev - lo)
        prev = lo
    return prev, bands


def inner(a: np.ndarray, reach: int) -> np.ndarray:
    """(C, h, w) without `reach` pixels on each side (fewer where that would leave under 4): every side of a
    footprint two blocks share is an edge of one of them, where its blur saw its own edge, not the image."""
    m = [max(0, min(reach, (n - 4) // 2)) for n in a.shape[1:]]
    return a[:, m[0]:a.shape[1] - m[0], m[1]:a.shape[2] - m[1]]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two detail arrays over the same footprint, clipped to [-0.5, 1] (the bound keeps the
    blend's variance, and so its normaliser, well away from zero)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = float(a @ a), float(b @ b)
    if na <= 0 or nb <= 0:
        return 1.0
    return float(np.clip((a @ b) / np.sqrt(na * nb), -0.5, 1.0))


class BlockBlender:
    """Accumulates blocks (in world row-major order) for the rows of a request; see the module docstring.

    pitch: block pitch B; span: block footprint side (B + overlap); fade: 1-D weight over the span;
    width: the request's width in pixels, col0: its first world column; radii: the detail bands (split_bands)."""

    def __init__(self, pitch: int, span: int, fade: np.ndarray, width: int, col0: int,
                 radii: Tuple[int, ...] = RADII):
        self.B, self.L, self.fade, self.W, self.col0, self.radii = pitch, span, fade, width, col0, tuple(radii)
        self.T = span - pitch  # shared band width
        self.top = None
        n = len(self.radii)
        self.lo = np.zeros((3, 0, width), np.float32)
        self.hi = [np.zeros((3, 0, width), np.float32) for _ in range(n)]
        self.wsum = np.zeros((0, width), np.float32)
        self.var = [np.zeros((0, width), np.float32) for _ in range(n)]
        # (kr, kc) -> per detail band, its (bottom, right) strips of the footprint
        self._bands: Dict[Tuple[int, int], List[Tuple[np.ndarray, np.ndarray]]] = {}
        self._rho_sum, self._rho_n = np.zeros(n), 0

    @property
    def mean_rho(self):
        """Mean correlation of the detail of neighbouring blocks over their shared footprints, over pairs and
        detail bands (None: no pair)."""
        return float(self._rho_sum.mean() / self._rho_n) if self._rho_n else None

    @property
    def mean_rho_bands(self):
        """The same per detail band, finest first (None: no pair)."""
        return tuple(float(v) for v in self._rho_sum / self._rho_n) if self._rho_n else None

    @property
    def rows_held(self) -> int:
        return self.wsum.shape[0]

    def _grow(self, g0: int, g1: int) -> None:
        if self.top is None:
            self.top = g0
        grow = g1 - self.top - self.wsum.shape[0]
        if grow > 0:
            z3 = np.zeros((3, grow, self.W), np.float32)
            z1 = np.zeros((grow, self.W), np.float32)
            self.lo = np.concatenate([self.lo, z3], axis=1)
            self.hi = [np.concatenate([h, z3], axis=1) for h in self.hi]
            self.wsum = np.concatenate([self.wsum, z1], axis=0)
            self.var = [np.concatenate([v, z1], axis=0) for v in self.var]

    def _weight(self, kr: int, kc: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Block (kr, kc)'s weight over world rows [r0, r1) x cols [c0, c1) (inside its footprint)."""
        d0, e0 = kr * self.B, kc * self.B
        return self.fade[r0 - d0:r1 - d0, None] * self.fade[None, c0 - e0:c1 - e0]

    def add(self, kr: int, kc: int, img: np.ndarray, rows: Tuple[int, int], cols: Tuple[int, int]) -> None:
        """Add block (kr, kc) (its whole footprint, (3, span, span)); rows/cols: the world rows and columns of
        the request it covers, [g0, g1) x [h0, h1)."""
        B, L, T = self.B, self.L, self.T
        g0, g1 = rows
        h0, h1 = cols
        d0, e0 = kr * B, kc * B
        lo, bands = split_bands(img, self.radii)
        self._grow(g0, g1)
        w = self._weight(kr, kc, g0, g1, h0, h1)
        rs = slice(g0 - self.top, g1 - self.top)
        cs = slice(h0 - self.col0, h1 - self.col0)
        self.lo[:, rs, cs] += lo[:, g0 - d0:g1 - d0, h0 - e0:h1 - e0] * w
        for acc, var, hi in zip(self.hi, self.var, bands):
            acc[:, rs, cs] += hi[:, g0 - d0:g1 - d0, h0 - e0:h1 - e0] * w
            var[rs, cs] += w * w
        self.wsum[rs, cs] += w
        # cross terms with the blocks added before this one that share part of its footprint: (neighbour, first
        # world column of the footprint shared with it, which part of this block's top band / left band); the
        # shared rows start at this block's first row d0 in every case
        for pr, pc, sc0, part in ((kr, kc - 1, e0, "left"), (kr - 1, kc - 1, e0, "top_left"),
                                  (kr - 1, kc, e0, "top"), (kr - 1, kc + 1, e0 + B, "top_right")):
            if (pr, pc) not in self._bands:
                continue
            r0, c0 = max(d0, g0), max(sc0, h0)
            for k, (hi, (bottom, right)) in enumerate(zip(bands, self._bands[(pr, pc)])):
                mine = {"left": hi[:, :, :T], "top_left": hi[:, :T, :T], "top": hi[:, :T, :],
                        "top_right": hi[:, :T, B:]}[part]
                # left neighbour: its right band, all rows; above: its bottom band, the columns shared with this one
                theirs = right if pr == kr else bottom[:, :, sc0 - pc * B:sc0 - pc * B + mine.shape[2]]
                rho = correlation(inner(mine, 2 * self.radii[-1]), inner(theirs, 2 * self.radii[-1]))
                self._rho_sum[k] += rho
                # the shared footprint, clipped to the request
                r1, c1 = min(d0 + mine.shape[1], g1), min(sc0 + mine.shape[2], h1)
                if r1 <= r0 or c1 <= c0:
                    continue
                cross = 2.0 * rho * self._weight(kr, kc, r0, r1, c0, c1) * self._weight(pr, pc, r0, r1, c0, c1)
                self.var[k][r0 - self.top:r1 - self.top, c0 - self.col0:c1 - self.col0] += cross
            self._rho_n += 1
        self._bands[(kr, kc)] = [(hi[:, L - T:, :].copy(), hi[:, :, L - T:].copy()) for hi in bands]
        # bands of blocks no later block can meet
        for key in [k for k in self._bands if k[0] < kr - 1 or (k[0] == kr - 1 and k[1] < kc - 1)]:
            del self._bands[key]

    def take(self, n: int) -> np.ndarray:
        """Finish and drop the first n held rows: (3, n, W) in the blocks' value range."""
        out = self.lo[:, :n] / self.wsum[:n]
        floor = 1e-3 * self.wsum[:n] ** 2
        for acc, var in zip(self.hi, self.var):
            # var >= wsum^2 / 4 whenever the correlations are >= -0.5; the floor only guards against rounding
            out += acc[:, :n] / np.sqrt(np.maximum(var[:n], floor))
        self.lo = self.lo[:, n:].copy()
        self.hi = [h[:, n:].copy() for h in self.hi]
        self.wsum = self.wsum[n:].copy()
        self.var = [v[n:].copy() for v in self.var]
        self.top += n
        return out


__all__ = ["BlockBlender", "box_blur", "split", "split_bands", "inner", "correlation", "RADIUS", "RADII"]
