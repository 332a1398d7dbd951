"""TAEF2, the tiny autoencoder of the FLUX.2 latent space (madebyollin/taesd at commit 5cccb12, MIT licence), as
a model package of kind "autoencoder" (models/taef2; core/runtime/autoencoder.py runs it).

    python -m rsgen_qgis.training.taef2 export --weights GITDIR_OR_FOLDER --out models/taef2 [--stats STATS.json]
    python -m rsgen_qgis.training.taef2 stats --data DATA --ae models/taef2 --out runs/taef2_stats.json

The network (written here from the published architecture): an 8x convolutional encoder to 32 latent channels and
its mirror decoder, built of residual blocks (three 3x3 convolutions with ReLUs, a 1x1 skip where widths differ);
the blocks at latent resolution add a pooled-statistics branch (1x1 conv, GroupNorm over the whole tile, ReLU,
1x1 conv). The decoder first bounds latents softly (3 tanh(z / 3)). Images are in [0, 1].

The weights are two zip-format torch files of fp16 tensors. They are read with a loader (training/safe_weights.py)
that first lists the pickle's globals and refuses anything but the tensor-rebuild ones, then loads with
torch.load(weights_only=True): nothing else is ever unpickled. Only ONNX graphs and JSON are written to the package, with the MIT notice.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from typing import Dict, Optional

import torch
from torch import nn

from ..core.runtime.models import sha256_file
from .safe_weights import ALLOWED_GLOBALS, UnsafeWeights, read_weights  # noqa: F401 (the loader, shared)

COMMIT = "5cccb12"
REPO = "github:madebyollin/taesd"
CHANNELS, FACTOR, WIDTH = 32, 8, 64


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _SoftBound(nn.Module):
    def forward(self, x):
        return 3.0 * torch.tanh(x / 3.0)


class _Block(nn.Module):
    """Residual block; `pooled`: the whole-tile GroupNorm branch added to the input first."""

    def __init__(self, n: int, pooled: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pooled:
            self.pool = nn.Sequential(nn.Conv2d(n, 4 * n, 1, bias=False), nn.GroupNorm(4, 4 * n), nn.ReLU(),
                                      nn.Conv2d(4 * n, n, 1, bias=False))

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def encoder() -> nn.Sequential:
    w = WIDTH
    down = lambda: _conv(w, w, stride=2, bias=False)  # noqa: E731
    return nn.Sequential(_conv(3, w), _Block(w),
                         down(), _Block(w), _Block(w), _Block(w),
                         down(), _Block(w), _Block(w), _Block(w),
                         down(), _Block(w, True), _Block(w, True), _Block(w, True),
                         _conv(w, CHANNELS))


def decoder() -> nn.Sequential:
    w = WIDTH
    up = lambda: [nn.Upsample(scale_factor=2), _conv(w, w, bias=False)]  # noqa: E731
    return nn.Sequential(_SoftBound(), _conv(CHANNELS, w), nn.ReLU(),
                         _Block(w, True), _Block(w, True), _Block(w, True), *up(),
                         _Block(w), _Block(w), _Block(w), *up(),
                         _Block(w), _Block(w), _Block(w), *up(),
                         _Block(w), _conv(w, 3))


def load(weights_dir: str):
    """(encoder, decoder) with the published weights, from a folder or a git dir holding taef2_*.pth."""
    enc, dec = encoder().eval(), decoder().eval()
    for part, net in (("encoder", enc), ("decoder", dec)):
        sd = read_weights(weight_file(weights_dir, part))
        net.load_state_dict({k: v.float() for k, v in sd.items()})
    return enc, dec


def weight_file(src: str, part: str) -> str:
    """The .pth of `part`: a file in folder `src`, or extracted from git dir `src` at COMMIT to a temp folder."""
    name = f"taef2_{part}.pth"
    if os.path.isfile(os.path.join(src, name)):
        return os.path.join(src, name)
    data = subprocess.run(["git", f"--git-dir={src}", "show", f"{COMMIT}:{name}"], check=True,
                          capture_output=True).stdout
    d = tempfile.mkdtemp(prefix="taef2-")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    return os.path.join(d, name)


def licence_text(src: str) -> str:
    if os.path.isfile(os.path.join(src, "LICENSE")):
        return open(os.path.join(src, "LICENSE"), encoding="utf-8").read()
    return subprocess.run(["git", f"--git-dir={src}", "show", f"{COMMIT}:LICENSE"], check=True,
                          capture_output=True, text=True).stdout


def export_graphs(enc: nn.Module, dec: nn.Module, out: str, fp16: bool = True) -> Dict[str, str]:
    """encoder.onnx ('image' [B,3,H,W] in [0,1] -> 'latent') and decoder.onnx ('latent' -> 'image'), dynamic
    batch and size; fp16 copies with float32 inputs and outputs (for GPUs)."""
    files = {}
    with torch.no_grad():
        torch.onnx.export(enc, (torch.rand(1, 3, 64, 64),), os.path.join(out, "encoder.onnx"),
                          input_names=["image"], output_names=["latent"], opset_version=17, dynamo=False,
                          do_constant_folding=False,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "latent": {0: "batch", 2: "height/8", 3: "width/8"}})
        torch.onnx.export(dec, (torch.randn(1, CHANNELS, 8, 8),), os.path.join(out, "decoder.onnx"),
                          input_names=["latent"], output_names=["image"], opset_version=17, dynamo=False,
                          do_constant_folding=False,
                          dynamic_axes={"latent": {0: "batch", 2: "height", 3: "width"},
                                        "image": {0: "batch", 2: "height*8", 3: "width*8"}})
    from .export import name_every_parameter

    name_every_parameter(os.path.join(out, "encoder.onnx"), enc)  # parameters under their names: the torch
    name_every_parameter(os.path.join(out, "decoder.onnx"), dec)  # networks can be rebuilt from the graphs
    files["encoder"], files["decoder"] = "encoder.onnx", "decoder.onnx"
    if fp16:
        from .export import export_fp16

        for part in ("encoder", "decoder"):
            export_fp16(os.path.join(out, f"{part}.onnx"), os.path.join(out, f"{part}_fp16.onnx"))
            files[f"{part}_fp16"] = f"{part}_fp16.onnx"
    return files


def write_package(src: str, out: str, stats: Optional[dict] = None, window: Optional[dict] = None,
                  fp16: bool = False, card: str = "") -> dict:
    """The models/taef2 package (replaced atomically): graphs, MIT notice, manifest."""
    enc, dec = load(src)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".taef2-", dir=parent)
    try:
        export_graphs(enc, dec, tmp, fp16)
        with open(os.path.join(tmp, "LICENSE-taesd.txt"), "w", encoding="utf-8") as f:
            f.write(licence_text(src))
        if card:
            with open(os.path.join(tmp, "MODEL_CARD.md"), "w", encoding="utf-8") as f:
                f.write(card)
        ae = {"factor": FACTOR, "channels": CHANNELS, "image_range": [0.0, 1.0],
              "encoder": {"file": "encoder.onnx", "input": "image", "output": "latent"},
              "decoder": {"file": "decoder.onnx", "input": "latent", "output": "image"},
              "latent_stats": stats or {"shift": [0.0] * CHANNELS, "scale": [1.0] * CHANNELS,
                                        "data": "none (identity)"},
              "window": window or {"latent_tile": 32, "latent_overlap": 8}}
        if fp16:
            ae["encoder"]["fp16_file"], ae["decoder"]["fp16_file"] = "encoder_fp16.onnx", "decoder_fp16.onnx"
        weights = {f"taef2_{p}.pth": sha256_file(weight_file(src, p)) for p in ("encoder", "decoder")}
        names = sorted(f for f in os.listdir(tmp) if not f.startswith("."))
        manifest = {"format": "rsgen-model-package/1", "id": "taef2",
                    "name": "TAEF2 tiny autoencoder (FLUX.2 latent space)", "version": COMMIT, "kind": "autoencoder",
                    "license": "MIT (madebyollin/taesd), see LICENSE-taesd.txt", "autoencoder": ae,
                    "source": {"repo": REPO, "commit": COMMIT, "weights_sha256": weights,
                               "converted_by": "rsgen_qgis.training.taef2"},
                    "files": {n: {"sha256": sha256_file(os.path.join(tmp, n)), "bytes": os.path.getsize(os.path.join(tmp, n))}
                              for n in names if n != "MODEL_CARD.md"}}
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
        # a folder (mkdtemp made it 0o700): the usual mode of a folder others may read, not a permissive file mask
        os.chmod(out, 0o755)  # nosec B103
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def latent_stats(data: str, ae_dir: str, limit: int = 0) -> dict:
    """Per-channel mean and standard deviation of the raw latents of the AID train split (144 px centre crops),
    through the package's own ONNX encoder."""
    import numpy as np

    from .data import load_aid
    from .latent_data import AID_CROP, open_autoencoder

    ae = open_autoencoder(ae_dir)
    ae.shift[:] = 0.0
    ae.scale[:] = 1.0
    imgs = load_aid(data, "train", None)["images"]
    if limit:
        imgs = imgs[np.random.default_rng(0).permutation(len(imgs))[:limit]]
    s = np.zeros(CHANNELS)
    s2 = np.zeros(CHANNELS)
    n = 0
    for im in imgs:
        a = im.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        o = (a.shape[1] - AID_CROP) // 2
        z = ae.encode(a[:, o:o + AID_CROP, o:o + AID_CROP]).astype(np.float64)
        s += z.sum((1, 2))
        s2 += (z ** 2).sum((1, 2))
        n += z.shape[1] * z.shape[2]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
    return {"shift": [round(float(v), 5) for v in mean], "scale": [round(float(v), 5) for v in std],
            "data": f"AID train split, {len(imgs)} scenes, {AID_CROP} px centre crops"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--weights", required=True, help="git dir of the taesd snapshot, or a folder with taef2_*.pth")
    e.add_argument("--out", default="models/taef2")
    e.add_argument("--stats", help="latent statistics JSON (the stats command)")
    e.add_argument("--window", default="32,8", help="latent window and overlap for windowed decoding")
    e.add_argument("--card", help="MODEL_CARD.md to ship")
    e.add_argument("--fp16", action="store_true", help="also fp16 graphs (fp32 inputs/outputs) for GPUs")
    s = sub.add_parser("stats")
    s.add_argument("--data", required=True)
    s.add_argument("--ae", default="models/taef2")
    s.add_argument("--out", required=True)
    s.add_argument("--limit", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "export":
        stats = json.load(open(a.stats)) if a.stats else None
        t, o = (int(v) for v in a.window.split(","))
        card = open(a.card, encoding="utf-8").read() if a.card else ""
        m = write_package(a.weights, a.out, stats, {"latent_tile": t, "latent_overlap": o}, a.fp16, card)
        print(f"wrote {a.out}: " + ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB" for k, v in m["files"].items()))
    else:
        st = latent_stats(a.data, a.ae, a.limit)
        with open(a.out, "w") as f:
            json.dump(st, f, indent=1)
        print(a.out, "mean std", sum(st["scale"]) / len(st["scale"]))


if __name__ == "__main__":
    main()
