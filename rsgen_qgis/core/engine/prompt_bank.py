"""Reading a free-form prompt in the caption space the model was trained on (manifest `conditions.prompt_bank`).

A small model trained on short scene captions follows the direction of every word of a prompt it never saw, and
classifier-free guidance amplifies it: "dense residential area with trees" lies nearest to the dense-residential
captions in the text encoder's space, yet the model draws woodland from it. A package may list the phrases it was
trained with (`phrases`) and a `temperature`; the prompt's sentence embedding is then replaced by a mixture of the
phrases' embeddings, each weighted by softmax(cosine similarity / temperature), rescaled to the prompt's norm. A
prompt that is one of the phrases stays close to it, and a longer one lands on what it is mostly about ("dense
residential area" 84 %, "dense trees" 6 %, ...). The GeoTIFF's `prompt_reading` tag records the leading phrases
and their weights.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

LEADING = 3  # phrases the tag names


def _bank(model):
    """(phrases, embeddings (N, D), unit rows, temperature) of the package's prompt bank, embedded once per loaded
    model; None without one."""
    spec = model.package.manifest.get("conditions", {}).get("prompt_bank")
    if not spec or model.text_encoder is None:
        return None
    with model.lock:
        cached = model.extra.get("_prompt_bank")
        if cached is None:
            phrases = list(spec["phrases"])
            emb = np.concatenate([np.asarray(model.text_encoder.embed(phrases[i:i + 64]), np.float32)
                                  for i in range(0, len(phrases), 64)])
            unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            cached = (phrases, emb, unit, float(spec["temperature"]))
            model.extra["_prompt_bank"] = cached
    return cached


def read(model, emb: Optional[np.ndarray]) -> Tuple[Optional[np.ndarray], str]:
    """The embedding the denoiser gets for a prompt embedding `emb` (1, D), and what the tag records."""
    if emb is None:
        return None, ""
    bank = _bank(model)
    if bank is None:
        return emb, ""
    phrases, embs, unit, tau = bank
    e = np.asarray(emb, np.float32)[0]
    norm = float(np.linalg.norm(e))
    sims = unit @ (e / max(norm, 1e-12))
    w = np.exp((sims - sims.max()) / tau)
    w /= w.sum()
    mix = w @ embs
    out = (mix * (norm / max(float(np.linalg.norm(mix)), 1e-12)))[None].astype(np.float32)
    top = np.argsort(-w, kind="stable")[:LEADING]
    tag = ", ".join(f"{phrases[i]} {w[i]:.0%}" for i in top)
    return out, tag
