"""generate(): one request in, one georeferenced COG out. The same engine serves the dock, Processing, the CLI
and the batch runner, for every kind of model package (pixel, latent, converted diffusers pipelines).

    request -> grid (core.geo) -> model + autoencoder (core.runtime) -> footprints (the canvas, or world-anchored
    blocks) -> latent windows sampled in one loop (core.engine.loop) -> decode -> COG (docs/ENGINE.md)

Order matters for users: everything that can be refused (extent, CRS, pixel budget, output folder, model,
conditions) is checked before the first model call, so a mistake costs no waiting and leaves no file.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional

import numpy as np

from .. import VERSION
from . import autoguide
from .loop import guidance_interval
from .classguide import recorded_scale
from .prepare import DECODED_CONSISTENCY, PromptCache, class_guidance_for, metadata_for
from .single import sample_canvas
from ..errors import Cancelled, ConditionError
from ..geo.georef import Grid, grid_for_request
from ..geo.geotiff import check_writable, write_cog
from ..request import GenerationRequest
from ..runtime.models import LoadedModel, cascade_factor, load, load_base

log = logging.getLogger("rsgen_qgis")
Progress = Callable[[float, str], None]


@dataclass
class GenerationResult:
    path: str
    grid: Grid
    provider: str
    seconds: float
    model_id: str
    warnings: List[str] = field(default_factory=list)
    stats: Optional[object] = None  # large-area path: core.engine.blocks.LargeAreaStats
    denoiser_graph: str = "fp32"    # the denoiser graph that ran: fp32, int8 (CPU) or fp16 (GPU)


def provenance_tags(req: GenerationRequest, model: LoadedModel, metadata: dict) -> dict:
    """GeoTIFF tags. The request is recorded with the output's file name only: the folder says nothing about
    the image, and leaving it out lets the same request written elsewhere give the same bytes (batch resume)."""
    request = req.to_dict()
    request["output"] = os.path.basename(req.output)
    request["class_guidance"] = recorded_scale(  # left to the model: its default, as a number
        req.class_guidance, model.class_guide.spec.default_scale if model.class_guide is not None else None)
    request["autoguidance"] = autoguide.recorded(req.autoguidance, model.package.manifest)
    below = getattr(model.denoiser, "exact_below", None)  # a stepped int8 denoiser: the last steps ran fp32
    extra = {"denoiser_fp32_below_timestep": below} if below else {}
    if model.autoencoder.factor > 1:
        extra["autoencoder"] = model.autoencoder.describe()
        extra["autoencoder_sha256"] = model.autoencoder.sha256
        variant = getattr(model.autoencoder, "variant", "fp32")  # the decoder graph that ran (int8 on the CPU)
        extra["decoder_graph"] = variant
        if variant != "fp32":
            extra["decoder_graph_sha256"] = model.autoencoder.variant_sha256
    return {
        **extra,
        "prompt": req.prompt, "seed": req.seed, "model_id": model.package.id,
        "model_sha256": model.package.denoiser_sha256, "denoiser_graph": model.variant,
        "denoiser_graph_sha256": model.variant_sha256 or model.package.denoiser_sha256,
        "sampler": req.sampler, "steps": req.steps,
        "guidance": req.guidance, "software": f"rsgen_qgis {VERSION}", "synthetic": "true",
        "provider": model.provider, "request": json.dumps(request, sort_keys=True),
        "metadata_used": {k: ("unknown" if v is None else v) for k, v in metadata.items()},
        "class_guidance": class_guidance_tag(req, model),
        **autoguidance_tags(req, model),
        **prompt_reading_tag(req, model),
        **guidance_interval_tag(model),
    }


def guidance_interval_tag(model: LoadedModel) -> dict:
    """The timesteps at which classifier-free guidance ran (the package's defaults.guidance_interval,
    core.engine.loop): a manifest setting, not part of the denoiser graph whose sha256 the tags carry, so recorded
    as such. None: guidance at every step (no tag)."""
    iv = guidance_interval(model)
    return {} if iv is None else {"guidance_interval": [iv[0], iv[1]]}


def prompt_reading_tag(req: GenerationRequest, model: LoadedModel) -> dict:
    """How the package's prompt bank read the prompt (core.engine.prompt_bank): its leading phrases and weights."""
    if model.interface != "rsgen" or model.text_encoder is None or not req.prompt.strip() or \
            "prompt_bank" not in model.package.manifest.get("conditions", {}):
        return {}
    cache = PromptCache(req, model)
    cache.pooled()
    return {"prompt_reading": cache.reading}


def autoguidance_tags(req: GenerationRequest, model: LoadedModel) -> dict:
    """What autoguidance did (core.engine.autoguide), in words, and the weak graph's sha256 when it ran."""
    r = autoguide.resolve(req, model) if model.interface == "rsgen" else autoguide.Resolved(1.0, "off")
    tags = {"autoguidance": r.tag}
    if r.scale > 1.0:
        tags["weak_denoiser_sha256"] = model.weak_sha256
    return tags


def class_guidance_tag(req: GenerationRequest, model: LoadedModel) -> str:
    """What class guidance did for this request, in words (the GeoTIFF's class_guidance tag)."""
    if model.interface != "rsgen" or model.class_guide is None:
        return class_guidance_for(req, model, None, []).tag
    emb = PromptCache(req, model).pooled() if model.text_encoder is not None else None
    return class_guidance_for(req, model, emb, []).tag


def _generate_large(req: GenerationRequest, grid: Grid, model: LoadedModel, progress: Progress,
                    cancelled: Callable[[], bool], window_batch: int, t0: float,
                    layout_source=None, guide_source=None, extra_tags=None,
                    valid: Optional[np.ndarray] = None) -> GenerationResult:
    """The large-area path: world-anchored blocks streamed into a COG (see core.engine.blocks)."""
    from ..geo.geotiff import CogStream
    from .blockblend import RADII as BLEND_RADII
    from .blocks import BlockLayout, check_conditions, generate_blocks

    check_conditions(req, grid)
    warnings: List[str] = []
    meta = metadata_for(grid, req, model.package.manifest, warnings)
    lay = BlockLayout.for_model(model, req.block_windows)
    tags = {**provenance_tags(req, model, meta), **(extra_tags or {})}
    tags["large_area"] = {"tile": lay.tile, "overlap": lay.overlap, "block": lay.block, "band": lay.band,
                          "block_windows": lay.block_windows,
                          "units": "latent cells" if lay.factor > 1 else "pixels", "factor": lay.factor,
                          "metadata": "per block (centre of each block)",
                          "blend": "contrast-preserving cross-fade, detail bands cut by " +
                                   ", ".join(f"{2 * r + 1} px" for r in BLEND_RADII) + " boxes x2, each renormalised"}
    if lay.factor > 1 and model.interface == "rsgen" and req.guide_consistency > 0 and \
            (req.conditions.guide is not None or guide_source is not None):
        tags["guide_consistency"] = DECODED_CONSISTENCY  # as prepare() sets it for each block
    with CogStream(req.output, grid, tags, valid) as out:
        stats = generate_blocks(req, model, grid, out, progress, cancelled, window_batch,
                                layout_source=layout_source, guide_source=guide_source)
        if cancelled():
            raise Cancelled("Generation cancelled; nothing was written.")
        progress(0.96, "Writing Cloud Optimized GeoTIFF")
        path = out.commit()
    for w in warnings:
        log.warning(w)
    progress(1.0, "Done")
    return GenerationResult(path, grid, model.provider, time.time() - t0, model.package.id, warnings, stats,
                            model.variant)


def _valid_pixels(req: GenerationRequest, grid: Grid) -> Optional[np.ndarray]:
    """(H, W) bool, False where the output stays nodata (req.conditions.nodata), or None when every pixel is data;
    refused before the model loads when it does not fit the grid or leaves no pixel to generate."""
    nodata = req.conditions.nodata
    if nodata is None:
        return None
    nodata = np.asarray(nodata, bool)
    if nodata.shape != (grid.height, grid.width):
        raise ConditionError(f"The nodata mask is {nodata.shape[-1]}x{nodata.shape[0]} pixels but the output grid is "
                             f"{grid.width}x{grid.height}; it must be made on the request's grid.")
    if nodata.all():
        raise ConditionError("The source has no valid pixel (all nodata or not finite): there is nothing to "
                             "generate from; check the raster's nodata value or choose another raster.")
    return None if not nodata.any() else ~nodata


@dataclass
class ArrayResult:
    """generate_array's answer: the image in memory instead of a file."""
    rgb: np.ndarray                 # (3, H, W) uint8 on `grid`
    grid: Grid
    provider: str
    seconds: float
    model_id: str
    model_version: str
    metadata: dict                  # the metadata the model was given (None = sent as unknown)
    warnings: List[str] = field(default_factory=list)
    denoiser_graph: str = "fp32"


def _load_for(req: GenerationRequest, grid: Grid, progress: Progress, cancelled: Callable[[], bool],
              model_dirs: Iterable[str], providers: Optional[List[str]], window_batch: int, threads: int,
              layout_source):
    """The model of a request and, with a cascade, the request guided by its coarse pass:
    -> (request, model, guide_source, projector, extra_tags, progress)."""
    progress(0.0, "Loading model")
    model = load(req.model, model_dirs, providers, threads, req.precision)
    guide_source, projector, extra_tags = None, None, {}
    if req.cascade > 1:
        from .cascade import with_coarse_guide

        coarse_model = model
        if cascade_factor(model.package) == req.cascade:  # the package's own coarse base model
            coarse_model = load_base(req.model, model_dirs, providers, threads)
        req, guide_source, projector = with_coarse_guide(
            req, grid, coarse_model, lambda f, msg: progress(0.2 * f, f"Coarse pass: {msg}"), cancelled,
            window_batch, layout_source)
        extra_tags["cascade_coarse_model"] = coarse_model.package.id
        extra_tags["cascade_coarse_sha256"] = coarse_model.package.denoiser_sha256
        outer = progress
        progress = lambda f, msg: outer(0.2 + 0.8 * f, msg)  # noqa: E731
    return req, model, guide_source, projector, extra_tags, progress


def generate(req: GenerationRequest, progress: Optional[Progress] = None,
             cancelled: Optional[Callable[[], bool]] = None, model_dirs: Iterable[str] = (),
             providers: Optional[List[str]] = None, window_batch: int = 8, threads: int = 0,
             layout_source: Optional[Callable[[Grid], np.ndarray]] = None) -> GenerationResult:
    """Generate `req.output`. Raises RsgenError subclasses; on error or cancel no file is left behind.

    With `req.large_area` the pixel budget is lifted and the area is generated in world-anchored blocks
    streamed to disk (memory independent of the area; overlapping requests agree pixel for pixel).
    layout_source (large-area path): grid -> (H, W) uint8 layout, called for each block's footprint.
    threads: ONNX Runtime intra-op threads (0 = its default)."""
    t0 = time.time()
    progress = progress or (lambda f, m: None)
    cancelled = cancelled or (lambda: False)
    grid = grid_for_request(req)
    check_writable(req.output)
    valid = _valid_pixels(req, grid)
    req, model, guide_source, projector, extra_tags, progress = _load_for(
        req, grid, progress, cancelled, model_dirs, providers, window_batch, threads, layout_source)
    if req.large_area:
        return _generate_large(req, grid, model, progress, cancelled, window_batch, t0, layout_source,
                               guide_source, extra_tags, valid)
    rgb, p = sample_canvas(req, model, grid, progress, cancelled, window_batch, projector)
    tags = {**provenance_tags(req, model, p.metadata), **extra_tags}
    if "guide_consistency" in p.extra:
        tags["guide_consistency"] = p.extra["guide_consistency"]
    progress(0.98, "Writing GeoTIFF")
    path = write_cog(req.output, rgb, grid, tags, valid=valid)
    for w in p.warnings:
        log.warning(w)
    progress(1.0, "Done")
    return GenerationResult(path, grid, model.provider, time.time() - t0, model.package.id, p.warnings,
                            denoiser_graph=model.variant)


def generate_array(req: GenerationRequest, progress: Optional[Progress] = None,
                   cancelled: Optional[Callable[[], bool]] = None, model_dirs: Iterable[str] = (),
                   providers: Optional[List[str]] = None, window_batch: int = 8, threads: int = 0) -> ArrayResult:
    """The image `generate` would write for a single request (cascade included), in memory: no GeoTIFF, and
    `req.output` is not used. For evaluations and tools that judge many tiles; large areas (streamed to disk)
    are refused. The nodata mask is not applied (it only masks the written file)."""
    if req.large_area:
        raise ConditionError("generate_array makes one canvas in memory; large areas are written by generate().")
    t0 = time.time()
    progress = progress or (lambda f, m: None)
    cancelled = cancelled or (lambda: False)
    grid = grid_for_request(req)
    req, model, _, projector, _, progress = _load_for(req, grid, progress, cancelled, model_dirs, providers,
                                                      window_batch, threads, None)
    rgb, p = sample_canvas(req, model, grid, progress, cancelled, window_batch, projector)
    progress(1.0, "Done")
    return ArrayResult(rgb, grid, model.provider, time.time() - t0, model.package.id,
                       str(model.package.manifest.get("version", "")), dict(p.metadata), list(p.warnings),
                       model.variant)
