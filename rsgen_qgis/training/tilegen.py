"""Tile generation for the evaluation and the comparison tools: batches of single tiles through a package's ONNX
graphs with the run time's sampler, condition encoding and guide consistency (without the GeoTIFF and window
machinery), in one stage or two (the package's coarse base model first, as the run time's cascade does).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.engine.classguide import alpha_bar_at, with_shift
from ..core.conditions.encoding import CondLayout, cond_vectors, layout_onehot, unconditional
from ..core.engine.guideproj import GuideProjector
from ..core.runtime.models import load, load_base
from ..core.engine.inpaint import hold_known
from ..core.request import DEFAULT_SAMPLER
from ..core.engine.samplers import Schedule, make_sampler
from ..core.engine.tiling import world_noise
from .captions import CLASS_PROMPT
from .data import AID_GSD_150, MAPS_GSD_256, NYC_LONLAT, load_maps

RES = 64


class TileGenerator:
    """Batched generation of single tiles through the package's ONNX graphs (the run-time code path's
    model, sampler and condition encoding, without the GeoTIFF and window machinery)."""

    def __init__(self, model_dir: str, steps: int, guidance: float, sampler: str = DEFAULT_SAMPLER,
                 precision: str = "auto", base: bool = False, class_scale: float = 0.0, class_guide=None):
        """base: the package's coarse base model (the two-stage generation's first stage). class_scale: class
        guidance (core.engine.classguide) with the package's class guide, or with `class_guide` when given."""
        self.m = load_base(model_dir, providers=["CPUExecutionProvider"]) if base else \
            load(model_dir, providers=["CPUExecutionProvider"], precision=precision)
        self.class_scale = class_scale
        self.class_guide = class_guide or (self.m.class_guide if class_scale > 0 else None)
        man = self.m.package.manifest
        self.lay = CondLayout.from_manifest(man["conditions"])
        self.sched = Schedule.from_config(man["scheduler"])
        self.steps, self.guidance, self.sampler = steps, guidance, sampler
        self.C = man["conditions"]["spatial_channels"]
        self.slay = man["conditions"]["spatial_layout"]
        self.guide_factor = int(man["conditions"].get("guide_factor", 4))

    def run(self, prompts: List[str], spatial: np.ndarray, seeds: List[int], batch: int = 32,
            guides: Optional[np.ndarray] = None, guide_weight: float = 1.0, known: Optional[np.ndarray] = None,
            mask: Optional[np.ndarray] = None, **meta) -> np.ndarray:
        """guides: (N, 3, h, w) low-resolution guides in [-1, 1] to hold each sample to, as the run time does
        (core.engine.guideproj); guide_weight 0 leaves the samples free. known (N, 3, H, W) in [-1, 1] and mask (H, W),
        1 = regenerate: inpainting, each sample held to the known pixels as the run time does (hold_known)."""
        out = []
        for i in range(0, len(prompts), batch):
            hook = None
            if guides is not None and guide_weight > 0:
                hook = GuideProjector.for_grid(guides[i:i + batch], spatial.shape[-2:], self.guide_factor, guide_weight)
            if mask is not None:
                hook = hold_known(known[i:i + batch], mask, hook)
            out.append(self._run(prompts[i:i + batch], spatial[i:i + batch], seeds[i:i + batch], hook, **meta))
        return np.concatenate(out)

    def _run(self, prompts, spatial, seeds, x0_hook=None, **meta) -> np.ndarray:
        n, res = len(prompts), spatial.shape[-1]
        spatial = np.asarray(spatial, np.float32)
        conds, unconds, uspatial = [], [], spatial.copy()
        cnd_m = self.m.package.manifest["conditions"]
        for i, p in enumerate(prompts):
            emb = self.m.text_encoder.embed([p]) if p else None
            conds.append(cond_vectors(self.lay, emb, guidance=self.guidance, **meta))
            # the run-time's unconditional branch (core.conditions.unconditional); none: the sample is unguided
            u = unconditional(self.lay, cnd_m, emb, self.guidance, **meta)
            unconds.append(conds[-1] if u is None else u[0])
            if u is not None and u[1] is not None:
                o, k = u[1]
                uspatial[i, o:o + k] = 0.0
        cond, uncond = np.concatenate(conds), np.concatenate(unconds)
        targets = None
        if self.class_scale > 0 and self.class_guide is not None:
            qs = [self.class_guide.target(self.m.text_encoder.embed([p])[0] if p else None) for p in prompts]
            if any(q is not None for q in qs):
                k = len(self.class_guide.spec.classes)
                targets = np.stack([np.zeros(k, np.float32) if q is None else q for q in qs])
                on = np.array([q is not None for q in qs], np.float32)[:, None, None, None]
        s = make_sampler(self.sampler, self.sched, self.steps)
        x = np.stack([world_noise(sd, 0, 0, res, res) for sd in seeds]) * s.init_noise_sigma
        s.with_step_noise(lambda k: np.stack([world_noise(sd, 0, 0, res, res, stream=k + 1) for sd in seeds]))
        two = "guidance_input" not in cnd_m  # a guidance-distilled model: one evaluation does both
        for i, t in enumerate(s.timesteps):
            xin = s.scale_model_input(x, i).astype(np.float32)
            if two:
                feed = {"sample": np.concatenate([xin, xin]), "timestep": np.full(2 * n, t, np.float32),
                        "spatial": np.concatenate([spatial, uspatial]), "cond": np.concatenate([cond, uncond])}
                o = self.m.denoiser.run(["prediction"], feed)[0]
                pred = o[n:] + self.guidance * (o[:n] - o[n:])
            else:
                feed = {"sample": xin, "timestep": np.full(n, t, np.float32), "spatial": spatial, "cond": cond}
                pred = self.m.denoiser.run(["prediction"], feed)[0]
            hook = x0_hook
            if targets is not None:
                ab = alpha_bar_at(self.sched, float(t))
                if self.class_guide.active(ab):
                    g = self.class_guide.gradient(xin, ab, targets) * on
                    hook = with_shift(self.class_guide.x0_shift(g, ab, self.class_scale), x0_hook)
            x = s.step(pred, i, x, hook).astype(np.float32)
        return np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)


class TwoStageGenerator:
    """The two-stage generation as the run time's cascade does it at the base's factor: the package's coarse base
    model makes each tile at 1/factor the size (4x the GSD) from the prompt, metadata and the layout (majority per
    coarse pixel), then the fine model makes the tile with that image as its guide, held to it (guide consistency).
    Same signature as TileGenerator.run for prompt and layout tiles."""

    def __init__(self, model_dir: str, steps: int, guidance: float, precision: str = "auto",
                 base_guidance: Optional[float] = None, sampler: str = DEFAULT_SAMPLER):
        self.fine = TileGenerator(model_dir, steps, guidance, sampler, precision=precision)
        man = self.fine.m.package.manifest
        self.factor = int(man["cascade_base"]["factor"])
        bg = man["cascade_base"]["manifest"].get("defaults", {}).get("guidance", guidance)
        self.base = TileGenerator(model_dir, steps, base_guidance or bg, sampler, base=True)
        self.C, self.slay, self.guide_factor = self.fine.C, self.fine.slay, self.fine.guide_factor

    def run(self, prompts, spatial, seeds, batch: int = 32, **meta) -> np.ndarray:
        f, res = self.factor, spatial.shape[-1]
        o, k = self.slay["layout"]
        lay = spatial[:, o:o + k]
        csp = np.zeros((len(prompts), self.base.C, res // f, res // f), np.float32)
        if meta.get("has_layout"):
            votes = lay.reshape(len(lay), k, res // f, f, res // f, f).sum((3, 5))
            csp[:, o:o + k] = np.eye(k, dtype=np.float32)[votes.argmax(1)].transpose(0, 3, 1, 2)
        cmeta = dict(meta, gsd_m=meta["gsd_m"] * f) if meta.get("gsd_m") else meta
        coarse = self.base.run(prompts, csp, seeds, batch, **cmeta)
        g = coarse.astype(np.float32) / 127.5 - 1
        sp = np.array(spatial, np.float32)
        o, k = self.slay["guide"]
        sp[:, o:o + k] = F.interpolate(torch.from_numpy(g), size=(res, res), mode="bilinear",
                                       align_corners=False).numpy()
        return self.fine.run(prompts, sp, seeds, batch, guides=g, **dict(meta, has_guide=True))


def comparison_cases(data: str, per_prompt: int = 2, n_layouts: int = 60, cache: str = os.path.join("runs", "cache"),
                     channels: int = 13) -> Dict[str, tuple]:
    """Tiles for comparing two ways of generating the same images (tools/distill_check.py, tools/quant_check.py):
    name -> (prompts, spatial, seeds, metadata): every class prompt `per_prompt` times, and (with `data`) the first
    held-out maps layouts without a prompt."""
    prompts = [p for p in CLASS_PROMPT.values() for _ in range(per_prompt)]
    cases = {"prompt": (prompts, np.zeros((len(prompts), channels, RES, RES), np.float32), list(range(len(prompts))),
                        dict(gsd_m=AID_GSD_150 * 150 / RES))}
    if data:
        lay = load_maps(data, "val", cache)["layout"][:n_layouts, 64:192:2, 64:192:2]
        sp = np.zeros((len(lay), channels, RES, RES), np.float32)
        for i, ids in enumerate(lay):
            sp[i, :6] = layout_onehot(ids.astype(np.uint8))
        cases["layout"] = ([""] * len(lay), sp, list(range(len(lay))),
                           dict(gsd_m=MAPS_GSD_256 * 128 / RES, lon=NYC_LONLAT[0], lat=NYC_LONLAT[1], has_layout=True))
    return cases
