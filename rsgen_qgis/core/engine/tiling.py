"""World-anchored noise and overlapping windows.

Noise is a pure function of (seed, channel, world row, world column) through a counter-based generator
(a SplitMix64-style hash of the counter, then Box-Muller): the same place asked twice at the same GSD gets
the same starting noise whatever the extent, which is what lets neighbouring requests agree. Windows of the
model's native tile overlap; their predictions are fused with smooth weights every step.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def world_noise(seed: int, col0: int, row0: int, height: int, width: int, channels: int = 3,
                stream: int = 0) -> np.ndarray:
    """(channels, height, width) float32 standard normal noise for world pixels starting at (row0, col0).
    stream: an independent draw for the same seed and place (0: the starting noise; k >= 1: the fresh noise a
    stochastic sampler adds at its k-th step), so that stochastic sampling stays a function of the place too."""
    with np.errstate(over="ignore"):
        rows = (np.arange(height, dtype=np.int64) + np.int64(row0)).astype(np.uint64)
        cols = (np.arange(width, dtype=np.int64) + np.int64(col0)).astype(np.uint64)
        key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLD + _GOLD)
        if stream:
            key = _mix(key ^ (np.uint64(stream) * _M1 + _M2))
        out = np.empty((channels, height, width), np.float32)
        for c in range(channels):
            kc = _mix(key ^ np.uint64(c + 1) * _M2)
            base = _mix(kc ^ (rows * _GOLD))[:, None]
            h1 = _mix(base ^ (cols * _M1)[None, :])
            h2 = _mix(h1 ^ _GOLD)
            u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / 9007199254740992.0
            u2 = (h2 >> np.uint64(11)).astype(np.float64) / 9007199254740992.0
            out[c] = (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)
    return out


def positions(length: int, tile: int, stride: int) -> List[int]:
    """Window starts covering [0, length) with windows of `tile`; the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


def windows(height: int, width: int, tile: int, overlap: int) -> List[Tuple[int, int, int, int]]:
    """(row, col, h, w) windows over a canvas at least `tile` large in both directions."""
    stride = max(1, tile - overlap)
    return [(r, c, min(tile, height), min(tile, width))
            for r in positions(height, tile, stride) for c in positions(width, tile, stride)]


def blend_weights(h: int, w: int, overlap: int) -> np.ndarray:
    """Smooth (raised-cosine) ramps over the overlap, flat inside; never exactly zero."""
    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, np.float32)
        k = min(overlap, n // 2)
        if k > 0:
            x = (np.arange(k, dtype=np.float32) + 0.5) / k
            edge = 0.5 - 0.5 * np.cos(np.pi * x)
            r[:k] = edge
            r[n - k:] = edge[::-1]
        return np.maximum(r, 1e-3)
    return ramp(h)[:, None] * ramp(w)[None, :]


def batched(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
