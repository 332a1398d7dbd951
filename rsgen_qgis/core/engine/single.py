"""The single-request path: the whole canvas (the grid padded to whole model tiles) in memory, every step's
windows fused, decoded once at the end, inpainting composited in pixels."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from . import loop
from .guideproj import GuideProjector, guide_projector
from .inpaint import composite
from .prepare import Footprint, Prepared, PromptCache, prepare
from .samplers import Schedule, make_sampler
from ..conditions.encoding import NO_LAYOUT, guide_upsample
from ..errors import ConditionError
from ..geo.georef import Grid
from ..request import GenerationRequest

Progress = Callable[[float, str], None]


def canvas_size(n: int, tile: int, multiple: int) -> int:
    """Pixels of canvas for n pixels of grid: at least one tile, a whole number of `multiple`s."""
    n = max(n, tile)
    return -(-n // multiple) * multiple


def _pad(a: np.ndarray, h: int, w: int, value=0) -> np.ndarray:
    ph, pw = h - a.shape[-2], w - a.shape[-1]
    if ph == 0 and pw == 0:
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(a, pad, mode="edge") if value == "edge" else np.pad(a, pad, constant_values=value)


def _check_shape(name: str, a: np.ndarray, grid: Grid, leading: tuple = ()) -> None:
    want = leading + (grid.height, grid.width)
    if np.shape(a) != want:
        raise ConditionError(f"The {name} is {np.shape(a)[-1]}x{np.shape(a)[-2]} pixels but the output grid is "
                             f"{grid.width}x{grid.height}; it must be made on the request's grid.")


def geometry(model) -> tuple:
    """(tile, overlap) in latent cells and (tile, multiple) in pixels for a loaded model."""
    m = model.package.manifest
    f = model.autoencoder.factor
    tile_px = int(m["tile"]["size"])
    mult = max(int(m["tile"].get("multiple", f)), f)
    tile = tile_px // f
    return tile, tile // 4, tile_px, mult


def footprint(req: GenerationRequest, model, grid: Grid, projector: Optional[GuideProjector] = None) -> Footprint:
    """The request's conditions as pixel arrays on its canvas (checked against the grid)."""
    _, _, tile_px, mult = geometry(model)
    hc, wc = canvas_size(grid.height, tile_px, mult), canvas_size(grid.width, tile_px, mult)
    c = req.conditions
    fp = Footprint(grid, hc, wc, strength=c.start_strength())
    if c.layout is not None:
        _check_shape("layout", c.layout, grid)
        fp.layout = _pad(np.asarray(c.layout, np.uint8), hc, wc, NO_LAYOUT)
    if c.image is not None:
        _check_shape("source image", c.image, grid, (3,))
        fp.known = _pad(np.asarray(c.image, np.float32) / 127.5 - 1.0, hc, wc, "edge")
    if c.mask is not None:
        if c.image is None:
            raise ConditionError("Inpainting needs the source image as well as the mask.")
        _check_shape("mask", c.mask, grid)
        fp.mask = _pad(np.asarray(c.mask, np.float32), hc, wc, 0.0)
        if not fp.mask.any():
            raise ConditionError("The inpainting mask is empty: no pixel to regenerate.")
    if c.guide is not None:
        g = np.asarray(c.guide, np.float32)
        if g.ndim != 3 or g.shape[0] != 3:
            raise ConditionError(f"The guide image must be RGB (3, h, w); got shape {g.shape}.")
        fp.guide = _pad(guide_upsample(g / 127.5 - 1.0, (grid.height, grid.width)), hc, wc, "edge")
        fp.projector = projector or guide_projector(req, model.package.manifest["conditions"], g / 127.5 - 1.0, grid)
        if fp.known is None and fp.strength < 1.0:  # super-resolution from the upsampled guide (SDEdit)
            fp.known = fp.guide
    return fp


def sample_canvas(req: GenerationRequest, model, grid: Grid, progress: Progress, cancelled: Callable[[], bool],
                  window_batch: int = 8, projector: Optional[GuideProjector] = None):
    """-> (uint8 RGB on the grid, Prepared). projector: guide consistency on the guide's own cells when the
    caller knows them (the cascade's coarse pixels), instead of the one made from the guide array."""
    m = model.package.manifest
    tile, overlap, _, _ = geometry(model)
    fp = footprint(req, model, grid, projector)
    schedule = Schedule.from_config(m["scheduler"])
    sampler = make_sampler(req.sampler, schedule, req.steps, fp.strength)
    p: Prepared = prepare(req, model, fp, PromptCache(req, model))
    col0, row0 = grid.world_offset
    f, ae = model.autoencoder.factor, model.autoencoder
    x = loop.start(sampler, p, req.seed, col0 // f, row0 // f, ae.channels, fp.strength)
    span = 0.97 if f == 1 else 0.9
    z = loop.run(model, p, sampler, schedule, x, req.guidance, tile, overlap, window_batch, cancelled,
                 on_step=lambda i, n: progress(i / n * span, f"Step {i}/{n}"))
    if f > 1:
        progress(0.92, "Decoding")
    img = np.clip(ae.decode(z)[:, :grid.height, :grid.width], -1, 1)
    if p.decoded_projector is not None:  # a latent model: guide consistency on the decoded pixels
        img = p.decoded_projector.smooth(img)
    if p.mask_px is not None:
        m_px = p.mask_px[:grid.height, :grid.width]
        rgb = composite(img, p.known_px[:, :grid.height, :grid.width], m_px, req.conditions.image)
    else:
        rgb = np.round((img + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    if cancelled():
        raise loop.Cancelled(loop.CANCELLED)
    return rgb, p
