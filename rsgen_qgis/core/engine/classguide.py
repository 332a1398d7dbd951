"""Class guidance at run time: a package's noise-aware scene classifier (`class_guide` in its manifest) steers
sampling towards the scene classes the prompt names (Dhariwal & Nichol 2021's classifier guidance).

The prompt is not parsed: its sentence embedding is compared with the embeddings of the classifier's class
phrases, and the softmax of those similarities (temperature from the manifest) is the target distribution. A
prompt near none of the classes (best similarity below the manifest's `min_similarity`) gets no class guidance.
Each step then moves the clean-image estimate by scale * (1 - a) / sqrt(a) * grad_x sum_k q_k log p_k(x_t)
(a = alpha_bar at the step), which is classifier guidance's shift of the noise prediction,
eps - sqrt(1 - a) * scale * grad, written for the clean-image estimate, within the manifest's noise range.
The graph returns its own input gradient (training/classguide.py), so no autograd is needed here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import ModelPackageError


def logsnr_input(alpha_bar: float) -> float:
    """The noise level as the classifier reads it (training.classguide.logsnr_channel)."""
    a = min(max(float(alpha_bar), 1e-8), 1 - 1e-8)
    return float(np.clip(np.log(a) - np.log1p(-a), -10.0, 10.0) / 10.0)


@dataclass
class ClassGuideSpec:
    """The manifest's `class_guide` section."""
    file: str
    classes: List[str]
    phrases: Dict[str, List[str]]
    temperature: float
    min_similarity: float
    min_logsnr: float
    max_logsnr: float
    default_scale: float

    @classmethod
    def from_manifest(cls, d: dict) -> "ClassGuideSpec":
        try:
            spec = cls(str(d["file"]), [str(c) for c in d["classes"]],
                       {str(k): [str(p) for p in v] for k, v in d["phrases"].items()},
                       float(d["temperature"]), float(d["min_similarity"]), float(d["min_logsnr"]),
                       float(d["max_logsnr"]), float(d.get("default_scale", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelPackageError(f"The model's class_guide section is incomplete or malformed ({e}).") from e
        missing = [c for c in spec.classes if not spec.phrases.get(c)]
        if missing or spec.temperature <= 0 or spec.min_logsnr >= spec.max_logsnr:
            raise ModelPackageError("The model's class_guide section is inconsistent (every class needs phrases, "
                                    "temperature > 0, min_logsnr < max_logsnr).")
        return spec


class ClassGuide:
    """A loaded class guide: the classifier's ONNX session and its class phrases' embeddings."""

    def __init__(self, spec: ClassGuideSpec, session, embed: Callable[[List[str]], np.ndarray]):
        self.spec, self.session, self._embed, self._class_emb = spec, session, embed, None

    @property
    def class_emb(self) -> np.ndarray:
        """(K, D) unit rows: each class's mean phrase embedding, made with the package's own text encoder on
        first use (a prompt and the classes are always compared in the same embedding)."""
        if self._class_emb is None:
            rows = []
            for c in self.spec.classes:
                e = np.asarray(self._embed(self.spec.phrases[c]), np.float64)
                e /= np.linalg.norm(e, axis=1, keepdims=True)
                m = e.mean(0)
                rows.append(m / np.linalg.norm(m))
            self._class_emb = np.stack(rows)
        return self._class_emb

    def target(self, embedding: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """The prompt's class distribution (K,), or None when the prompt is near no class (or absent)."""
        if embedding is None:
            return None
        e = np.asarray(embedding, np.float64).reshape(-1)
        e = e / max(np.linalg.norm(e), 1e-12)
        sim = self.class_emb @ e
        if sim.max() < self.spec.min_similarity:
            return None
        z = (sim - sim.max()) / self.spec.temperature
        q = np.exp(z)
        return (q / q.sum()).astype(np.float32)

    def top_classes(self, target: np.ndarray, n: int = 3) -> List[str]:
        order = np.argsort(-target)[:n]
        return [f"{self.spec.classes[k]} {target[k]:.2f}" for k in order]

    def active(self, alpha_bar: float) -> bool:
        ls = logsnr_input(alpha_bar) * 10.0
        return self.spec.min_logsnr <= ls <= self.spec.max_logsnr

    def gradient(self, x_t: np.ndarray, alpha_bar: float, target: np.ndarray) -> np.ndarray:
        """grad_x sum_k q_k log p_k(x_t) for a batch (N, 3, h, w) of variance-preserving noisy samples."""
        n = len(x_t)
        feed = {"sample": np.ascontiguousarray(x_t, np.float32),
                "logsnr": np.full((n,), logsnr_input(alpha_bar), np.float32),
                "target": np.broadcast_to(np.asarray(target, np.float32), (n, len(self.spec.classes))).copy()}
        return self.session.run(["grad"], feed)[0]

    @staticmethod
    def x0_shift(grad: np.ndarray, alpha_bar: float, scale: float) -> np.ndarray:
        """Classifier guidance's shift of the clean-image estimate for this step."""
        a = float(alpha_bar)
        return (scale * (1.0 - a) / np.sqrt(a) * grad).astype(np.float32)


def with_shift(shift: np.ndarray, then: Optional[Callable[[np.ndarray], np.ndarray]]):
    """An x0 hook that adds `shift` first, then applies `then` (guide consistency, inpainting's known pixels),
    so those constraints still hold exactly after guidance."""
    def hook(x0: np.ndarray) -> np.ndarray:
        out = x0 + shift
        return then(out) if then is not None else out
    return hook


def alpha_bar_at(schedule, t: float) -> float:
    """alpha_bar at a (possibly fractional) training timestep, interpolated in the schedule."""
    a = np.asarray(schedule.alphas_cumprod, np.float64)
    return float(np.interp(float(t), np.arange(len(a)), a))


@dataclass
class Resolved:
    """Class guidance for one request: the target distribution (None: off), the scale and what the GeoTIFF's
    `class_guidance` tag records (why it is off, or the scale and the prompt's leading classes)."""
    target: Optional[np.ndarray]
    scale: float
    tag: str


def resolve(requested: Optional[float], guide: Optional[ClassGuide], embedding: Optional[np.ndarray]) -> Resolved:
    """requested: the request's class_guidance (None = the model's default)."""
    if guide is None:
        why = "off: the model has no class guide"
        return Resolved(None, 0.0, why if requested is None or requested == 0 else why + " (the request's "
                        f"{requested:g} was not applied)")
    scale = guide.spec.default_scale if requested is None else float(requested)
    if scale <= 0:
        return Resolved(None, 0.0, "off")
    if embedding is None:
        return Resolved(None, 0.0, "off: no prompt")
    target = guide.target(embedding)
    if target is None:
        return Resolved(None, 0.0, "off: the prompt is near none of the model's scene classes")
    return Resolved(target, scale, f"scale {scale:g} towards " + ", ".join(guide.top_classes(target)))
