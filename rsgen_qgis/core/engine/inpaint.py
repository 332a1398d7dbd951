"""Inpainting's two halves: holding the known pixels (or latents) during sampling, and the final composite in
pixels, where everything outside the mask is the source byte for byte."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..conditions.seamless import seamless_fill


def hold_known(known: np.ndarray, mask: np.ndarray,
               then: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> Callable[[np.ndarray], np.ndarray]:
    """Inpainting's data consistency, an x0 hook for the sampler: every step's clean-image estimate keeps the
    source outside the mask (x0 <- mask * x0 + (1 - mask) * known, mask 1 = regenerate), so the sample moves
    towards a fill that continues the known pixels instead of only reading them as a condition. With rsgen-base
    (97 held-out scenes, 32 px hole): hole PSNR +0.38 dB, better in 81 of 97, colour shift -2.2 grey levels
    (model card). `then`: a further hook applied after it (guide consistency). known (.., 3, H, W), mask (H, W)."""
    mask = np.asarray(mask, np.float32)
    fixed = np.asarray(known, np.float32) * (1.0 - mask)

    def hook(x0: np.ndarray) -> np.ndarray:
        out = x0 * mask + fixed
        return then(out) if then is not None else out
    return hook


def feather(mask: np.ndarray, width: int = 4) -> np.ndarray:
    """Alpha that is 1 deep inside the mask and ramps to 0 at its border, staying 0 outside: the result
    outside the mask is the source, byte for byte, and the border has no hard edge."""
    m = mask > 0.5
    dist = np.where(m, 0, -1).astype(np.int32)
    cur = m.copy()
    for d in range(1, width + 1):  # erode step by step: distance inside the mask, in pixels (4-neighbour)
        er = cur.copy()
        er[1:, :] &= cur[:-1, :]; er[:-1, :] &= cur[1:, :]; er[:, 1:] &= cur[:, :-1]; er[:, :-1] &= cur[:, 1:]
        dist[cur & ~er] = d
        cur = er
    dist[cur] = width + 1
    return np.where(m, np.clip(dist / (width + 1), 0, 1), 0.0).astype(np.float32)


def composite(img: np.ndarray, known: np.ndarray, mask: np.ndarray, source_uint8: np.ndarray) -> np.ndarray:
    """The decoded fill (3, H, W) in [-1, 1] into the source: a smooth correction makes the fill meet the known
    pixels (core.conditions.seamless), a feathered edge blends it in, and pixels outside the mask are the
    source's own bytes. Returns uint8 RGB."""
    img = np.clip(seamless_fill(img, known, mask), -1, 1)
    a = feather(mask)
    img = known * (1 - a) + img * a
    rgb = np.round((img + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    outside = mask <= 0.5
    rgb[:, outside] = np.asarray(source_uint8)[:, outside]
    return rgb
