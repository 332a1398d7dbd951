"""The sampling loop, written once: a latent canvas (a single request's, or one large-area block's) is cut into
overlapping windows of the model's tile; each step the windows go through the denoiser in batches
(core.engine.predictors), their predictions are fused with smooth weights, class guidance adds its shift, and
the sampler steps the whole canvas with the x0 hooks (inpainting's known latents, guide consistency).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

from . import classguide
from .inpaint import hold_known
from .predictors import predict
from .prepare import Prepared
from .samplers import Sampler, Schedule
from .tiling import batched, blend_weights, windows, world_noise
from ..errors import Cancelled

CANCELLED = "Generation cancelled; nothing was written."


def _fuse(acc: np.ndarray, wsum: np.ndarray, weights: dict, group, outs, overlap: int) -> None:
    """Add each window's output into the canvas with its smooth blend weight (weights: cache by window size)."""
    for (r, c, h, w), o in zip(group, outs):
        wgt = weights.setdefault((h, w), blend_weights(h, w, overlap))
        acc[:, r:r + h, c:c + w] += o * wgt
        wsum[r:r + h, c:c + w] += wgt


def denoise_step(model, p: Prepared, x: np.ndarray, t: float, guidance: float, tile: int, overlap: int,
                 batch: int, cancelled: Callable[[], bool],
                 tick: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """The guided model prediction for the whole canvas: windows batched and fused with smooth weights."""
    acc = np.zeros_like(x)
    wsum = np.zeros(x.shape[1:], np.float32)
    weight: dict = {}
    for group in batched(windows(p.canvas_h, p.canvas_w, tile, overlap), batch):
        if cancelled():
            raise Cancelled(CANCELLED)
        xs = np.stack([x[:, r:r + h, c:c + w] for r, c, h, w in group])
        _fuse(acc, wsum, weight, group, predict(model, p, xs, t, guidance, group), overlap)
        if tick is not None:
            tick(len(group))
    return acc / wsum


def class_shift(model, p: Prepared, xin: np.ndarray, t: float, schedule: Schedule, tile: int,
                overlap: int, batch: int) -> Optional[np.ndarray]:
    """This step's class-guidance shift of the clean estimate on the whole canvas (windows batched and fused with
    the same smooth weights as the model's predictions), or None where guidance is off or outside its range."""
    cg = p.class_guidance
    if cg is None or cg.target is None:
        return None
    ab = classguide.alpha_bar_at(schedule, t)
    if not model.class_guide.active(ab):
        return None
    acc = np.zeros_like(xin, dtype=np.float32)
    wsum = np.zeros(xin.shape[1:], np.float32)
    weight: dict = {}
    for group in batched(windows(p.canvas_h, p.canvas_w, tile, overlap), batch):
        xs = np.stack([xin[:, r:r + h, c:c + w] for r, c, h, w in group])
        _fuse(acc, wsum, weight, group, model.class_guide.gradient(xs, ab, cg.target), overlap)
    return classguide.ClassGuide.x0_shift(acc / wsum, ab, cg.scale)


def start(sampler: Sampler, p: Prepared, seed: int, col0: int, row0: int, channels: int,
          strength: float = 1.0) -> np.ndarray:
    """The starting canvas: world-anchored noise on the latent grid (cell (row0, col0) is the canvas's first),
    or the known latents noised to the first kept step (variation). Binds the sampler's per-step noise too."""
    h, w = p.canvas_h, p.canvas_w
    noise = world_noise(seed, col0, row0, h, w, channels)
    sampler.with_step_noise(lambda i: world_noise(seed, col0, row0, h, w, channels, stream=i + 1))
    if strength < 1.0:
        return sampler.add_noise(p.known, noise, sampler.start_timestep).astype(np.float32)
    return (noise * sampler.init_noise_sigma).astype(np.float32)


def guidance_interval(model) -> Optional[Tuple[float, float]]:
    """The timesteps [lo, hi] (the scheduler's training timesteps) at which the package applies classifier-free
    guidance (manifest `defaults.guidance_interval`, checked by the manifest schema); None: at every step.
    Outside it a step takes the conditional prediction alone (scale 1; an rsgen denoiser then runs one evaluation
    instead of two, a converted diffusers UNet still runs its two):
    guidance at the noisiest steps pulls every sample of a prompt towards the same composition and at the last
    steps only sharpens texture (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval")."""
    iv = (model.package.manifest.get("defaults") or {}).get("guidance_interval")
    return None if iv is None else (float(iv[0]), float(iv[1]))


def guidance_at(guidance: float, t: float, interval: Optional[Tuple[float, float]]) -> float:
    """The scale this step uses: the request's inside the package's guidance interval (or everywhere), 1 outside."""
    if interval is None or interval[0] <= t <= interval[1]:
        return guidance
    return 1.0


def run(model, p: Prepared, sampler: Sampler, schedule: Schedule, x: np.ndarray, guidance: float, tile: int,
        overlap: int, batch: int, cancelled: Callable[[], bool],
        on_step: Optional[Callable[[int, int], None]] = None,
        tick: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """Every step of the sampler on the canvas; returns the final latents (unclipped)."""
    n = len(sampler.timesteps)
    hook = p.guide_projector if p.mask is None else hold_known(p.known, p.mask, p.guide_projector)
    interval = guidance_interval(model)
    for i, t in enumerate(sampler.timesteps):
        if cancelled():
            raise Cancelled(CANCELLED)
        xin = sampler.scale_model_input(x, i)
        g = guidance_at(guidance, float(t), interval)
        pred = denoise_step(model, p, xin, float(t), g, tile, overlap, batch, cancelled, tick)
        shift = class_shift(model, p, xin, float(t), schedule, tile, overlap, batch)
        x = sampler.step(pred, i, x, hook if shift is None else classguide.with_shift(shift, hook)).astype(np.float32)
        if on_step is not None:
            on_step(i + 1, n)
    return x
