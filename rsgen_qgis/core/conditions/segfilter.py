"""Sample filter for generated datasets: keep an image only if a segmentation net sees its objects where the boxes
say they are (AeroGen's filtering idea: a generated sample whose layout the image does not show is a bad label).

The net is an ONNX graph with one input, (B, 3, H, W) float32 RGB in [-1, 1], and one output, (B, C, H, W) class
scores over the model's layout classes (core.conditions.LAYOUT_CLASSES, same order). A model package may ship it
as graphs.segmenter in its manifest; otherwise the user gives the file. A box is confirmed when at least
`box_fraction` of the pixels whose centres fall inside it are predicted as the box's layout class; a sample is
kept when at least `keep_fraction` of its boxes are confirmed (a sample without boxes is kept).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .encoding import LAYOUT_CLASSES
from ..errors import ConditionError, ModelPackageError

Quad = Sequence[Tuple[float, float]]


def quad_mask(corners_px: Quad, height: int, width: int) -> np.ndarray:
    """(H, W) bool: pixel centres inside a convex quadrilateral given in pixel coordinates (col, row)."""
    c = np.asarray(corners_px, np.float64)
    rows = np.arange(height)[:, None] + 0.5
    cols = np.arange(width)[None, :] + 0.5
    signs = []
    for i in range(len(c)):
        (x0, y0), (x1, y1) = c[i], c[(i + 1) % len(c)]
        signs.append((x1 - x0) * (rows - y0) - (y1 - y0) * (cols - x0))
    s = np.stack([np.broadcast_to(v, (height, width)) for v in signs])
    return np.all(s >= 0, 0) | np.all(s <= 0, 0)


def package_segmenter(package) -> Optional[str]:
    """Path of the package's segmentation net (manifest graphs.segmenter.file), or None when it has none."""
    seg = (package.manifest.get("graphs") or {}).get("segmenter")
    if not seg:
        return None
    path = package.file(seg["file"])
    if not os.path.isfile(path):
        raise ModelPackageError(f"{path}: the manifest names a segmentation net but the file is missing.")
    return path


class SegNet:
    """An ONNX segmentation net over the layout classes (see the module docstring for its contract)."""

    def __init__(self, path: str, classes: Sequence[str] = LAYOUT_CLASSES):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise ConditionError(f"The segmentation net {path} does not exist.")
        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types
            raise ConditionError(f"{path}: ONNX Runtime cannot load this segmentation net ({exc}).") from exc
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1 or len(ins[0].shape) != 4 or len(outs) < 1 or len(outs[0].shape) != 4:
            raise ConditionError(f"{path}: a segmentation net must take one (B, 3, H, W) image and give (B, C, H, W) "
                                 "class scores.")
        n = outs[0].shape[1]
        if isinstance(n, int) and n != len(classes):
            raise ConditionError(f"{path}: the net predicts {n} classes, the layout has {len(classes)} "
                                 f"({', '.join(classes)}).")
        self.input, self.output, self.path = ins[0].name, outs[0].name, path
        self.classes = tuple(classes)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """(3, H, W) uint8 -> (H, W) class ids."""
        x = (np.asarray(rgb, np.float32) / 127.5 - 1.0)[None]
        out = self.session.run([self.output], {self.input: x})[0]
        if out.shape[0] != 1 or out.shape[2:] != x.shape[2:]:
            raise ConditionError(f"{self.path}: the net gave scores of shape {out.shape} for an image of "
                                 f"{x.shape[2:]}; it must keep the image size.")
        return out[0].argmax(0)


def box_agreement(pred: np.ndarray, boxes: Sequence[Tuple[int, Quad]]) -> List[float]:
    """For each (class id, pixel corners): the fraction of its pixels predicted as that class (1.0 if it has none
    in the image, i.e. nothing to contradict)."""
    h, w = pred.shape
    out = []
    for cls, corners in boxes:
        m = quad_mask(corners, h, w)
        out.append(float((pred[m] == cls).mean()) if m.any() else 1.0)
    return out


def keep_sample(agreement: Sequence[float], box_fraction: float = 0.5, keep_fraction: float = 0.5) -> bool:
    if not agreement:
        return True
    confirmed = sum(a >= box_fraction for a in agreement)
    return confirmed >= keep_fraction * len(agreement)
