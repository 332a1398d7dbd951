"""Inpainting and variation of a raster window larger than one request's pixel budget, part by part.

The large-area path (core.largearea) takes a layout and a guide only: its blocks start from noise. Inpainting
and variation start from an image, so a window over the budget is cut into overlapping parts of at most the
budget, each one an ordinary request through core.pipeline.generate:
- inpainting goes part after part, each seeing the parts before as known pixels (held, as outside the mask):
  a part keeps its pixels up to where the next part starts, the next one fills the rest with that context,
  so a polygon cut by a part border is filled once, continuously;
- variation parts are independent (world-anchored noise makes them agree where they overlap) and cross-faded
  over their overlap.
Pixels outside the inpainting mask stay the source's, byte for byte, as with one request. The dock's task calls
`generate_request` for every request: anything else goes straight to core.pipeline.generate.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from typing import Callable, Iterable, List, Optional, Tuple

import numpy as np

from .errors import Cancelled
from .georef import Grid, grid_for_request
from .request import Conditions, GenerationRequest
from .tiling import blend_weights, positions

Progress = Callable[[float, str], None]


def in_parts(req: GenerationRequest) -> bool:
    """Whether a request goes part by part: inpainting or variation with the budget lifted (Large area)."""
    return bool(req.large_area) and req.conditions.image is not None and req.conditions.guide is None


def _split(n: int, side: int, overlap: int) -> List[int]:
    """Starts of the fewest parts of equal size at most `side` covering [0, n), overlapping by `overlap`, and
    their size."""
    k = 1 if n <= side else math.ceil((n - overlap) / (side - overlap))
    size = min(n, math.ceil((n + (k - 1) * overlap) / k))
    return positions(n, size, max(1, size - overlap)), size


def plan(height: int, width: int, budget: int, tile: int) -> Tuple[List[Tuple[int, int, int, int]], int]:
    """(parts as (row, col, h, w), overlap) covering height x width with the fewest parts of at most `budget`
    pixels, overlapping by one model tile (a quarter of a part at most): 1098 x 3039 px in 4 parts of 581 x 1552
    for a budget of 1024 x 1024, not 8 squares that overlap by most of their width."""
    square = max(tile, math.isqrt(max(budget, 1)))
    overlap = max(1, min(tile, square // 4))
    cols, pw = _split(width, square, overlap)
    rows, ph = _split(height, max(tile, budget // pw), overlap)
    return [(r, c, ph, pw) for r in rows for c in cols], overlap


def _part_request(req: GenerationRequest, grid: Grid, part, output: str, conditions: Conditions):
    r, c, h, w = part
    g = grid.window(c, r, w, h)
    return req.replace(extent=g.bounds, gsd=None, width=w, height=h, large_area=False, output=output,
                       pixel_budget=max(req.pixel_budget, w * h), conditions=conditions)


def generate_request(req: GenerationRequest, progress: Optional[Progress] = None,
                     cancelled: Optional[Callable[[], bool]] = None, model_dirs: Iterable[str] = (),
                     providers: Optional[List[str]] = None, **engine):
    """core.pipeline.generate, or part by part for inpainting/variation with Large area (same arguments)."""
    from . import pipeline

    if not in_parts(req):
        return pipeline.generate(req, progress, cancelled, model_dirs=model_dirs, providers=providers, **engine)
    return generate_in_parts(req, progress, cancelled, model_dirs, providers, **engine)


def generate_in_parts(req: GenerationRequest, progress: Optional[Progress] = None,
                      cancelled: Optional[Callable[[], bool]] = None, model_dirs: Iterable[str] = (),
                      providers: Optional[List[str]] = None, **engine):
    import rasterio

    from . import pipeline
    from .geotiff import check_writable, write_cog
    from .models import load

    t0 = time.time()
    progress = progress or (lambda f, m: None)
    cancelled = cancelled or (lambda: False)
    grid = grid_for_request(req)
    check_writable(req.output)
    c = req.conditions
    image = np.ascontiguousarray(c.image, dtype=np.uint8)
    if image.shape != (3, grid.height, grid.width):
        from .errors import ConditionError

        raise ConditionError(f"The source image is {image.shape[2]}x{image.shape[1]} pixels but the output grid "
                             f"is {grid.width}x{grid.height}; it must be read on the request's grid.")
    model = load(req.model, model_dirs, providers, engine.get("threads", 0), req.precision)
    tile = int(model.package.manifest["tile"]["size"])
    parts, overlap = plan(grid.height, grid.width, req.pixel_budget, tile)
    inpaint = c.mask is not None
    todo = np.array(c.mask, bool, copy=True) if inpaint else None
    result = image.copy()
    acc = None if inpaint else np.zeros((3, grid.height, grid.width), np.float32)
    wsum = None if inpaint else np.zeros((grid.height, grid.width), np.float32)
    rows = sorted({p[0] for p in parts})
    cols = sorted({p[1] for p in parts})
    warnings: List[str] = []
    last = None
    folder = tempfile.mkdtemp(prefix=".rsgen-parts-", dir=os.path.dirname(os.path.abspath(req.output)))
    try:
        for k, part in enumerate(parts):
            if cancelled():
                raise Cancelled("Generation cancelled; nothing was written.")
            r, cc, h, w = part
            sl = (slice(None), slice(r, r + h), slice(cc, cc + w))
            if inpaint:
                m = todo[r:r + h, cc:cc + w]
                if not m.any():
                    continue
                cond = Conditions(mask=m.copy(), image=result[sl].copy())
            else:
                cond = Conditions(image=image[sl].copy(), strength=c.strength)
            sub = _part_request(req, grid, part, os.path.join(folder, f"part{k}.tif"), cond)

            def part_progress(f: float, msg: str, k=k) -> None:
                progress(0.97 * (k + f) / len(parts), f"Part {k + 1}/{len(parts)}: {msg}")

            last = pipeline.generate(sub, part_progress, cancelled, model_dirs=model_dirs, providers=providers,
                                     **engine)
            warnings += [x for x in last.warnings if x not in warnings]
            with rasterio.open(last.path) as ds:
                out = ds.read()
            os.remove(last.path)
            if inpaint:  # keep up to where the next part starts: it redoes the rest with this part as context
                r1 = next((x for x in rows if x > r), grid.height)
                c1 = next((x for x in cols if x > cc), grid.width)
                result[:, r:r1, cc:c1] = out[:, :r1 - r, :c1 - cc]
                todo[r:r1, cc:c1] = False
            else:
                wgt = blend_weights(h, w, overlap)
                acc[sl] += out.astype(np.float32) * wgt
                wsum[r:r + h, cc:cc + w] += wgt
        if not inpaint:
            result = np.round(acc / np.maximum(wsum, 1e-6)).clip(0, 255).astype(np.uint8)
        if cancelled():
            raise Cancelled("Generation cancelled; nothing was written.")
        progress(0.98, "Writing GeoTIFF")
        meta_warnings: List[str] = []
        tags = pipeline.provenance_tags(req, model, pipeline.metadata_for(grid, req, model.package.manifest,
                                                                          meta_warnings))
        tags["parts"] = f"{len(parts)} parts of {parts[0][3]} x {parts[0][2]} px, overlap {overlap} px"
        path = write_cog(req.output, result, grid, tags)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    progress(1.0, "Done")
    return pipeline.GenerationResult(path, grid, model.provider, time.time() - t0, model.package.id, warnings,
                                     denoiser_graph=last.denoiser_graph if last else model.variant)


__all__ = ["generate_request", "generate_in_parts", "in_parts", "plan"]
