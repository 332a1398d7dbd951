"""Inpainting masks on the pixel grid: growing a mask by a ground distance (shadows and edges of what is removed
go with it; a border on open ground blends best, see README "Is there an edge at the mask border?")."""
from __future__ import annotations

import numpy as np

STEP_PX = 3.0  # a large radius is reached in steps of at most this many pixels (Minkowski sums of ellipses)


def _dilate_ellipse(mask: np.ndarray, rx: float, ry: float) -> np.ndarray:
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-int(ry), int(ry) + 1):
        for dx in range(-int(rx), int(rx) + 1):
            if (dx or dy) and (dx / max(rx, 1e-9)) ** 2 + (dy / max(ry, 1e-9)) ** 2 <= 1.0 + 1e-9:
                ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
                xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
                out[yd, xd] |= mask[ys, xs]
    return out


def grow(mask: np.ndarray, rx_px: float, ry_px: float) -> np.ndarray:
    """The mask dilated by an ellipse of radii rx_px (columns) and ry_px (rows): every pixel within that distance
    of a masked pixel. Pixels of a non-square ground size take rx_px = metres / pixel width, ry_px = metres /
    pixel height. Radii below half a pixel leave the mask as it is."""
    m = np.asarray(mask, bool)
    if max(rx_px, ry_px) < 0.5 or not m.any():
        return m.copy()
    # n steps of at most STEP_PX; each axis's whole radius spread over them as integers, so the axes reach
    # exactly round(r) and the shape stays an ellipse (Minkowski sum of small ellipses)
    n = max(1, int(np.ceil(max(rx_px, ry_px) / STEP_PX)))
    ax = np.diff(np.round(np.linspace(0, round(rx_px), n + 1))).astype(int)
    ay = np.diff(np.round(np.linspace(0, round(ry_px), n + 1))).astype(int)
    for a, b in zip(ax, ay):
        m = _dilate_ellipse(m, float(a), float(b))
    return m


__all__ = ["grow"]
