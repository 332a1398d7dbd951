"""Guide consistency: keep a generated image's coarse content equal to the low-resolution guide it was asked to
super-resolve (range-null-space decomposition, Wang et al. 2023 "DDNM"; Irani & Peleg's back-projection).

The guide is a coarse view of the wanted image: A(x) = g, with A the area average of x onto the guide's cells
(4 x 4 blocks for the model's x4 guide). The denoiser only *reads* the guide, so its samples drift from it (a
sample is one plausible image, and the drift costs PSNR). Here every step's clean-image estimate x0 is replaced
by its nearest image that meets the guide exactly,

    x0 <- x0 + A+ (g - A x0)          (A+ = pseudo-inverse: the smallest correction; nearest-neighbour
                                       upsampling when A is a block mean)

so the model decides only what the guide cannot say (detail inside a cell), and the next steps blend the
correction into that detail. A is separable (rows x columns), so A+ is the Kronecker product of two small
pseudo-inverses and one projection costs two matrix products per channel. `weight` < 1 moves x0 only part of
the way (a guide from another sensor that should steer, not bind).

Where the guide is finer than the model's guide factor (the cascade's guide is upsampled to the full grid), the
constraint is taken at the factor's resolution (or a coarser one the caller names): consistency at a finer
scale than the guide truly carries would copy its interpolation.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in): row i is the mean of the input cells under output cell i, when n_out cells of equal size
    cover the same span as n_in (fractional overlaps weighted by their length)."""
    return cell_matrix(np.arange(n_out + 1) * (n_in / n_out), n_in)


def cell_matrix(edges: np.ndarray, n: int) -> np.ndarray:
    """(cells, n): row k is the mean over pixels [edges[k], edges[k + 1]) of an axis of n pixels (fractional
    edges weighted by overlap)."""
    lo, hi = np.asarray(edges[:-1], np.float64)[:, None], np.asarray(edges[1:], np.float64)[:, None]
    j = np.arange(n)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
    return overlap / overlap.sum(1, keepdims=True)


def _inside_cells(g_n: int, full_n: int, off: int, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """The guide cells (indices) of an axis of g_n cells over full_n grid pixels that lie wholly inside both
    the grid and the window [off, off + n), and their edges in window pixels."""
    edges = np.arange(g_n + 1) * (full_n / g_n) - off
    k = np.nonzero((edges[:-1] >= -1e-9) & (edges[1:] <= n + 1e-9))[0]
    return k, np.append(edges[k], edges[k[-1] + 1]) if len(k) else np.zeros(1)


def _regular_cells(a: np.ndarray) -> Optional[Tuple[int, int]]:
    """(first pixel, cell size) when the rows of `a` are plain means over consecutive, equal, whole-pixel runs
    (the guide's cells are whole blocks of pixels: x4 super-resolution, the cascade's coarse pixels)."""
    nz = a > 0
    size = int(nz[0].sum())
    start = int(np.argmax(nz[0]))
    want = np.zeros_like(a)
    for k in range(a.shape[0]):
        want[k, start + k * size:start + (k + 1) * size] = 1.0 / size
    return (start, size) if start + a.shape[0] * size <= a.shape[1] and np.allclose(a, want) else None


class GuideProjector:
    """Callable x0 -> x0 meeting A(x0) = target on the (H, W) grid at the top-left of x0's last two axes (the
    canvas may be padded beyond the grid; padding is left alone). A = ay (rows) x ax (columns)."""

    def __init__(self, target: np.ndarray, ay: np.ndarray, ax: np.ndarray, weight: float = 1.0,
                 clip: Optional[Tuple[float, float]] = (-1.0, 1.0), iterations: int = 4):
        """target (..., C, th, tw); ay (th, H), ax (tw, W). clip: the images' value range, so the estimate stays a
        valid image that still meets the guide once the final image is clipped: exactly where the cells are
        whole pixel blocks (_project_blocks), else by alternating the projection with clipping `iterations`
        times (POCS, ending on the projection)."""
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"guide weight must be in [0, 1] (got {weight})")
        self.target, self.ay, self.ax = np.asarray(target, np.float64), ay, ax
        self.size, self.cells = (ay.shape[1], ax.shape[1]), (ay.shape[0], ax.shape[0])
        self.weight, self.clip, self.iterations = float(weight), clip, max(1, int(iterations))
        self.py, self.px = np.linalg.pinv(ay), np.linalg.pinv(ax)
        self._blocks = (_regular_cells(ay), _regular_cells(ax))
        self._smooth = None  # smooth()'s per-axis bases, made on first use

    @classmethod
    def for_grid(cls, guide: np.ndarray, size: Tuple[int, int], factor: int = 4, weight: float = 1.0,
                 coarsest: Optional[Tuple[int, int]] = None, **kw) -> "GuideProjector":
        """guide: (C, gh, gw) (or a batch, (N, C, gh, gw)) covering the (H, W) grid exactly. The constraint is
        held at min(guide size, grid / factor) cells, or at `coarsest` if smaller: the guide's own pixels when
        it is that coarse, else its area means."""
        g = np.asarray(guide, np.float64)
        H, W = size
        gh, gw = g.shape[-2:]
        th, tw = min(gh, max(1, round(H / factor))), min(gw, max(1, round(W / factor)))
        if coarsest is not None:
            th, tw = min(th, coarsest[0]), min(tw, coarsest[1])
        target = area_matrix(th, gh) @ g @ area_matrix(tw, gw).T
        return cls(target, area_matrix(th, H), area_matrix(tw, W), weight, **kw)

    @classmethod
    def for_window(cls, guide: np.ndarray, full: Tuple[int, int], row_off: int, col_off: int, h: int, w: int,
                   weight: float = 1.0, **kw) -> Optional["GuideProjector"]:
        """For the window [row_off, +h) x [col_off, +w) of a grid of size `full` that the guide (C, gh, gw)
        covers: the constraint on the guide's own pixels wholly inside the window (the large-area path's
        blocks; cells cut by the window's edge are left free). None when no cell is wholly inside."""
        g = np.asarray(guide, np.float64)
        ky, ey = _inside_cells(g.shape[-2], full[0], row_off, h)
        kx, ex = _inside_cells(g.shape[-1], full[1], col_off, w)
        if not len(ky) or not len(kx):
            return None
        ay, ax = cell_matrix(ey, h), cell_matrix(ex, w)
        return cls(g[..., ky[0]:ky[-1] + 1, kx[0]:kx[-1] + 1], ay, ax, weight, **kw)

    def residual(self, x: np.ndarray) -> np.ndarray:
        """target - A x (per channel) of the grid part of x: how far x is from meeting the guide."""
        H, W = self.size
        return self.target - self.ay @ np.asarray(x, np.float64)[..., :H, :W] @ self.ax.T

    def project(self, x: np.ndarray) -> np.ndarray:
        """The nearest image to x (grid part) that meets the guide exactly."""
        return x + self.py @ self.residual(x) @ self.px.T

    def _project_blocks(self, x: np.ndarray) -> np.ndarray:
        """Exact nearest image within the value range whose cell means meet the guide, for cells that are whole
        pixel blocks: per cell, clip(x + shift). The shift is the plain mean correction where that stays in
        range (nearly every cell) and is found by bisection (the mean is monotone in it) where it does not;
        targets outside the range are taken at its edge."""
        (ry, fy), (rx, fx) = self._blocks
        th, tw = self.cells
        lo_v, hi_v = self.clip
        y = np.array(x)
        region = y[..., ry:ry + th * fy, rx:rx + tw * fx]
        lead = region.shape[:-2]
        cells = region.reshape(lead + (th, fy, tw, fx)).swapaxes(-3, -2).reshape(-1, fy * fx)  # (M, n)
        t = np.clip(np.broadcast_to(self.target, lead + (th, tw)), lo_v, hi_v).reshape(-1, 1)
        z = cells + (t - cells.mean(1, keepdims=True))
        bad = np.nonzero((z.min(1) < lo_v) | (z.max(1) > hi_v))[0]
        if len(bad):
            c, tb = cells[bad], t[bad]
            lo, hi = lo_v - c.max(1, keepdims=True), hi_v - c.min(1, keepdims=True)
            for _ in range(30):
                mid = 0.5 * (lo + hi)
                low = np.clip(c + mid, lo_v, hi_v).mean(1, keepdims=True) < tb
                lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
            zb = np.clip(c + 0.5 * (lo + hi), lo_v, hi_v)
            z[bad] = zb + (tb - zb.mean(1, keepdims=True))  # the bisection's last ~1e-9
        y[..., ry:ry + th * fy, rx:rx + tw * fx] = z.reshape(lead + (th, tw, fy, fx)).swapaxes(-3, -2).reshape(
            region.shape)
        return y

    def _smooth_basis(self):
        """Per axis: B (n, cells), the tent interpolation from the cells' centres to the pixels (flat beyond the
        first and last centre), and inv(A B), so that B inv(A B) r is the smooth correction whose cell means are r."""
        if self._smooth is None:
            out = []
            for a in (self.ay, self.ax):
                n, k = a.shape[1], a.shape[0]
                centres = a @ (np.arange(n) + 0.5)
                b = np.zeros((n, k))
                pos = np.interp(np.arange(n) + 0.5, centres, np.arange(k)) if k > 1 else np.zeros(n)
                lo = np.floor(pos).astype(int).clip(0, max(k - 2, 0))
                t = pos - lo
                b[np.arange(n), lo] += 1 - t
                if k > 1:
                    b[np.arange(n), lo + 1] += t
                out.append((b, np.linalg.inv(a @ b)))
            self._smooth = out
        return self._smooth

    def smooth(self, x: np.ndarray, iterations: int = 3) -> np.ndarray:
        """For an image made without the guide in the loop (a latent model, whose steps never see pixels): the
        image plus the *smooth* correction (tent-interpolated from the cells' centres, not constant per cell)
        whose cell means are the residual, so the detail the model drew is kept, the guide's coarse content is
        met and no cell edges appear; alternated with clipping to the value range `iterations` times (the last
        clip leaves the means off only where the target is out of range). Iterative back-projection (Irani &
        Peleg 1991) solved exactly for the cells. `weight` moves that part of the way."""
        if self.weight == 0.0:
            return x
        (by, iy), (bx, ix) = self._smooth_basis()
        H, W = self.size
        x64 = np.asarray(x, np.float64)[..., :H, :W]
        y = x64
        for _ in range(max(1, int(iterations))):
            y = y + (by @ iy) @ self.residual(y) @ (bx @ ix).T
            if self.clip is not None:
                y = np.clip(y, *self.clip)
        out = np.array(x, dtype=np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
        out[..., :H, :W] = x64 + self.weight * (y - x64)
        return out

    def __call__(self, x0: np.ndarray) -> np.ndarray:
        if self.weight == 0.0:
            return x0
        H, W = self.size
        x = np.asarray(x0, np.float64)[..., :H, :W]
        if self.clip is not None and None not in self._blocks:
            y = self._project_blocks(x)
        else:
            y = self.project(x)
            for _ in range(self.iterations - 1 if self.clip is not None else 0):
                y = self.project(np.clip(y, *self.clip))
        out = np.array(x0, dtype=np.float64 if np.asarray(x0).dtype == np.float64 else np.float32)
        out[..., :H, :W] = x + self.weight * (y - x)
        return out


def guide_projector(req: GenerationRequest, cond_manifest: dict, guide: np.ndarray, grid: Grid
                    ) -> Optional[GuideProjector]:
    """The guide-consistency step for this request, or None (guide_consistency 0). The constraint is held at
    the guide's own resolution, at most the model's guide factor below the grid's; the cascade's guide is the
    coarse pass upsampled to the grid, so there it is held at the coarse pass's resolution."""
    if req.guide_consistency <= 0:
        return None
    factor = int(cond_manifest.get("guide_factor", 4))
    coarsest = None
    if req.cascade > 1:
        coarsest = (max(1, round(grid.height / req.cascade)), max(1, round(grid.width / req.cascade)))
    return GuideProjector.for_grid(guide, (grid.height, grid.width), factor, req.guide_consistency, coarsest)
