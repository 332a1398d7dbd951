"""Autoguidance at run time (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself").

A package may carry a weaker model of the same task and interface (manifest `graphs.weak_denoiser`: an earlier,
shorter-trained instalment, typically shipped as an int8 graph) and a default scale (`defaults.autoguidance`).
Each step then moves the prediction away from what the weak model predicts for the same conditions:

    out = guided + (w - 1) * (cond - weak)

where `guided` is the classifier-free-guided prediction (the conditional one when guidance is off) and `cond` the
conditional prediction. The difference between a model and a weaker version of itself points at what training
adds - sharper structure and fewer of the weak model's mistakes - without the loss of variety that a larger
classifier-free scale brings. w = 1 is off (the prediction is the guided one, unchanged); the cost is one more
evaluation of the weak graph per window and step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..request import GenerationRequest

WEAK_GRAPH = "weak_denoiser"


@dataclass(frozen=True)
class Resolved:
    scale: float  # 1.0 = off
    tag: str      # what the GeoTIFF's autoguidance tag records


def package_default(manifest: dict) -> float:
    """The scale a package with a weak model asks for when the request leaves it to the model."""
    return float((manifest.get("defaults") or {}).get("autoguidance", 1.0))


def scale(req: GenerationRequest, manifest: dict) -> float:
    """The scale this request runs with on a package with this manifest (1.0: off)."""
    if WEAK_GRAPH not in manifest.get("graphs", {}):
        return 1.0
    w = package_default(manifest) if req.autoguidance is None else float(req.autoguidance)
    return max(w, 1.0)


def resolve(req: GenerationRequest, model) -> Resolved:
    """The request's autoguidance with this model: the request's scale, or the package's default; off for models
    without a weak graph (the tag says why)."""
    if getattr(model, "weak", None) is None:
        if req.autoguidance is not None and req.autoguidance > 1.0:
            return Resolved(1.0, f"off: model {model.package.id!r} has no weaker model to guide with")
        return Resolved(1.0, "off")
    w = scale(req, model.package.manifest)
    if w <= 1.0:
        return Resolved(1.0, "off")
    spec = model.package.manifest["graphs"][WEAK_GRAPH]
    source = spec.get("source")
    return Resolved(w, f"scale {w:g}, weak model {spec['file']}" + (f" ({source})" if source else ""))


def recorded(requested: Optional[float], manifest: dict) -> Optional[float]:
    """The scale a record keeps (as core.engine.classguide.recorded_scale): a request that left it to a model with
    a weak graph records the package's default as a number, so the record stays exact if a later package changes
    it; otherwise what was requested (None for models without a weak model)."""
    if requested is None and WEAK_GRAPH in manifest.get("graphs", {}):
        return package_default(manifest)
    return requested


def apply(model, scale: float, guided: np.ndarray, cond: np.ndarray, feed: dict) -> np.ndarray:
    """guided + (scale - 1) * (cond - weak), the weak model run on `feed` (the conditional inputs of `cond`)."""
    with model.lock:
        weak = model.weak.run(["prediction"], feed)[0]
    return (guided + np.float32(scale - 1.0) * (cond - weak)).astype(np.float32)
