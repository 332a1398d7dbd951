"""Coarse-to-fine cascade (MetaEarth's self-cascade): generate the area at a coarser GSD first, then generate
the requested GSD guided by the coarse image upsampled to it (the model's low-resolution guide condition).

Two kinds of coarse pass:
- the package's coarse base model (`cascade_base` in its manifest, training/cascade_base.py) when the factor is
  the base's (4 for rsgen-base): a model trained at a quarter of the tile on the same scenes, so one base tile
  covers the ground of one fine tile; it lays out the scene's classes with capacity the fine model shares with
  texture (the two-stage generation);
- otherwise the same model at `cascade` times the GSD: each window sees more ground, so large structures
  (fields, river bends, town edges) are laid out at a scale the 64 px window cannot see at the fine GSD.
Either way the fine pass adds the detail, held to the coarse image by guide consistency (core.engine.guideproj). The
coarse grid is the request's extent snapped outward at the coarse GSD, so it is itself world-anchored, and on
the large-area path both passes are (overlapping cascaded requests agree away from their edges, where the
fine blocks reaching past the request see the guide's edge). The coarse pass takes the prompt, the metadata
and the layout (each coarse pixel takes the class most of its fine pixels have; the large-area path's layout
source draws the layers on the coarse grid), so the guide agrees with the layout the fine pass follows.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from ..conditions.encoding import NO_LAYOUT
from ..errors import ConditionError
from ..geo.georef import Grid, grid_for_request
from .guideproj import GuideProjector
from ..request import Conditions, GenerationRequest


class _ArrayWriter:
    """A writer for core.engine.blocks.generate_blocks that keeps the (small) coarse image in memory."""

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


def coarse_layout(layout: np.ndarray, grid: Grid, cgrid: Grid) -> np.ndarray:
    """(H, W) class ids on `grid` -> ids on the coarser `cgrid` (same CRS): each coarse pixel takes the class
    most of the fine pixels whose centres fall in it have (no-layout pixels do not vote; none left: no layout)."""
    cx0, cpx, _, cy0, _, cnpy = cgrid.transform
    x0, px, _, y0, _, npy = grid.transform
    cols = np.floor((x0 + (np.arange(grid.width) + 0.5) * px - cx0) / cpx).astype(int)
    rows = np.floor((y0 + (np.arange(grid.height) + 0.5) * npy - cy0) / cnpy).astype(int)
    ids = np.asarray(layout)
    n_cls = int(ids[ids != NO_LAYOUT].max()) + 1 if (ids != NO_LAYOUT).any() else 1
    votes = np.zeros((n_cls, cgrid.height, cgrid.width), np.int32)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    ok = (ids != NO_LAYOUT) & (rr >= 0) & (rr < cgrid.height) & (cc >= 0) & (cc < cgrid.width)
    np.add.at(votes, (ids[ok].astype(int), rr[ok], cc[ok]), 1)
    out = votes.argmax(0).astype(np.uint8)
    out[votes.sum(0) == 0] = NO_LAYOUT
    return out


def coarse_projector(coarse: np.ndarray, cgrid: Grid, grid: Grid, weight: float) -> Optional[GuideProjector]:
    """Guide consistency on the coarse image's own pixels for `grid` (a window of the fine grid that the coarse
    grid covers): each fine grid's block of factor x factor pixels under a coarse pixel averages to it. None
    when the GSD ratio is not a whole number or consistency is off (then the caller holds the upsampled guide)."""
    x0, px, _, y0, _, npy = grid.transform
    cx0, cpx, _, cy0, _, cnpy = cgrid.transform
    f = cpx / px
    if weight <= 0 or abs(f - round(f)) > 1e-6 or abs(cnpy / npy - f) > 1e-6:
        return None
    f = int(round(f))
    col_off, row_off = round((x0 - cx0) / px), round((y0 - cy0) / npy)
    return GuideProjector.for_window(coarse.astype(np.float32) / 127.5 - 1.0, (cgrid.height * f, cgrid.width * f),
                                     row_off, col_off, grid.height, grid.width, weight)


class CoarseGuide:
    """guide_source for the large-area path: the coarse image resampled to any block's grid, on demand, so the
    full-resolution guide never exists in memory (the coarse image is 1/cascade^2 of the output)."""

    def __init__(self, coarse: np.ndarray, cgrid: Grid):
        self.coarse, self.cgrid = coarse, cgrid

    def __call__(self, grid: Grid) -> np.ndarray:
        return upsample_to(self.coarse, self.cgrid, grid)

    def projector(self, grid: Grid, weight: float) -> Optional[GuideProjector]:
        return coarse_projector(self.coarse, self.cgrid, grid, weight)


def with_coarse_guide(req: GenerationRequest, grid: Grid, model, progress: Callable[[float, str], None],
                      cancelled: Callable[[], bool], window_batch: int = 8, layout_source=None):
    """Run the coarse pass with `model` (the package's base model or the model itself); return (fine request,
    guide_source, projector): on the single-request path the request carries the coarse image upsampled to its
    grid as its guide and the projector holds the fine image to the coarse pixels (guide_source None); on the
    large-area path the request is unchanged and guide_source gives each block its part of the guide and its
    projector."""
    from .blocks import generate_blocks
    from .single import sample_canvas

    if req.conditions.guide is not None:
        raise ConditionError("The cascade makes its own guide image; give either a guide or a cascade factor.")
    creq = req.replace(gsd=float(req.gsd) * req.cascade, cascade=0, conditions=Conditions())
    cgrid = grid_for_request(creq)
    if req.conditions.layout is not None:
        creq = creq.replace(conditions=Conditions(layout=coarse_layout(req.conditions.layout, grid, cgrid)))
    if req.large_area:
        out = _ArrayWriter(cgrid)
        generate_blocks(creq, model, cgrid, out, progress, cancelled, window_batch, layout_source=layout_source)
        coarse = out.array
    else:
        coarse, _ = sample_canvas(creq, model, cgrid, progress, cancelled, window_batch)
    if req.large_area:
        return req, CoarseGuide(coarse, cgrid), None
    guide = upsample_to(coarse, cgrid, grid)
    return (req.replace(conditions=dataclasses.replace(req.conditions, guide=guide)), None,
            coarse_projector(coarse, cgrid, grid, req.guide_consistency))
