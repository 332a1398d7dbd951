"""Coarse-to-fine cascade (MetaEarth's self-cascade): generate the area at a coarser GSD first, then generate
the requested GSD guided by the coarse image upsampled to it (the model's low-resolution guide condition).

The coarse pass sees `cascade` times more ground per window, so large structures (fields, river bends, town
edges) are laid out at a scale the 64 px window cannot see at the fine GSD; the fine pass adds detail. The
coarse grid is the request's extent snapped outward at the coarse GSD, so it is itself world-anchored, and on
the large-area path both passes are (overlapping cascaded requests agree away from their edges, where the
fine blocks reaching past the request see the guide's edge). The coarse pass takes the prompt and metadata,
not the layout (layouts are drawn at the fine grid).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from .errors import ConditionError
from .georef import Grid, grid_for_request
from .models import LoadedModel
from .request import Conditions, GenerationRequest


class _ArrayWriter:
    """A writer for core.largearea.generate_blocks that keeps the (small) coarse image in memory."""

    def __init__(self, grid: Grid):
        self.array = np.zeros((3, grid.height, grid.width), np.uint8)

    def write(self, rgb: np.ndarray, row_off: int, col_off: int) -> None:
        self.array[:, row_off:row_off + rgb.shape[1], col_off:col_off + rgb.shape[2]] = rgb


def upsample_to(coarse: np.ndarray, cgrid: Grid, grid: Grid) -> np.ndarray:
    """Bilinear resampling of `coarse` on `cgrid` to the pixel centres of `grid` (same CRS), as uint8."""
    cx0, cpx, _, cy0, _, cnpy = cgrid.transform
    x0, px, _, y0, _, npy = grid.transform
    u = (x0 + (np.arange(grid.width) + 0.5) * px - cx0) / cpx - 0.5
    v = (y0 + (np.arange(grid.height) + 0.5) * npy - cy0) / cnpy - 0.5
    u = np.clip(u, 0, cgrid.width - 1)
    v = np.clip(v, 0, cgrid.height - 1)
    u0 = np.floor(u).astype(int); v0 = np.floor(v).astype(int)
    u1 = np.minimum(u0 + 1, cgrid.width - 1); v1 = np.minimum(v0 + 1, cgrid.height - 1)
    wu = (u - u0).astype(np.float32)[None, None, :]; wv = (v - v0).astype(np.float32)[None, :, None]
    c = coarse.astype(np.float32)
    top = c[:, v0][:, :, u0] * (1 - wu) + c[:, v0][:, :, u1] * wu
    bot = c[:, v1][:, :, u0] * (1 - wu) + c[:, v1][:, :, u1] * wu
    return np.round(top * (1 - wv) + bot * wv).clip(0, 255).astype(np.uint8)


class CoarseGuide:
    """guide_source for the large-area path: the coarse image resampled to any block's grid, on demand, so the
    full-resolution guide never exists in memory (the coarse image is 1/cascade^2 of the output)."""

    def __init__(self, coarse: np.ndarray, cgrid: Grid):
        self.coarse, self.cgrid = coarse, cgrid

    def __call__(self, grid: Grid) -> np.ndarray:
        return upsample_to(self.coarse, self.cgrid, grid)


def with_coarse_guide(req: GenerationRequest, grid: Grid, model: LoadedModel, progress: Callable[[float, str], None],
                      cancelled: Callable[[], bool], window_batch: int = 8):
    """Run the coarse pass; return (fine request, guide_source): on the single-request path the request carries
    the coarse image upsampled to its grid as its guide (guide_source None); on the large-area path the request
    is unchanged and guide_source gives each block its part of the guide."""
    from .largearea import generate_blocks
    from .pipeline import sample_canvas

    if req.conditions.guide is not None:
        raise ConditionError("The cascade makes its own guide image; give either a guide or a cascade factor.")
    creq = req.replace(gsd=float(req.gsd) * req.cascade, cascade=0, conditions=Conditions())
    cgrid = grid_for_request(creq)
    if req.large_area:
        out = _ArrayWriter(cgrid)
        generate_blocks(creq, model, cgrid, out, progress, cancelled, window_batch)
        coarse = out.array
    else:
        coarse, _ = sample_canvas(creq, model, cgrid, progress, cancelled, window_batch)
    if req.large_area:
        return req, CoarseGuide(coarse, cgrid)
    guide = upsample_to(coarse, cgrid, grid)
    return req.replace(conditions=dataclasses.replace(req.conditions, guide=guide)), None
