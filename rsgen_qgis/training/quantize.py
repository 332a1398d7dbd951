"""An int8 CPU graph for a pixel package's denoiser, calibrated on real sampling trajectories.

    python -m rsgen_qgis.training.quantize --model models/rsgen-base --data DATA

Static quantization with ONNX Runtime (QDQ format): the convolutions get per-output-channel int8 weights and
uint8 activations whose ranges come from calibration; everything else (normalisation, attention, the time and
condition embeddings) stays fp32. The calibration inputs are what the denoiser really sees: the inputs of every
step of 20-step DPM-Solver++ runs through the package's own graphs (core sampler and condition encoding), on
training-split material only - class prompts at several guidance scales, maps layouts, low-resolution guides
and inpainting holes from the training halves. The graph is written beside the others as denoiser_int8.onnx,
the manifest gains `graphs.denoiser.int8_file` and the file's sha256, and the run time uses it on the CPU
unless precision "fp32" is asked for (core.runtime.models.load). Figures of its cost: MODEL_CARD.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Dict, Iterable, List, Optional

import numpy as np

from ..core.runtime.models import read_package, sha256_file

INT8_FILE = "denoiser_int8.onnx"
QUANTIZED_OPS = ("Conv",)
# Steps at timesteps below this run the fp32 graph (core.runtime.models.SteppedDenoiser): the last 3 of 20 DPM-Solver++
# steps. Measured on held-out layouts / super-resolution (MODEL_CARD.md): int8 everywhere 0.93 / 22.11 dB,
# fp32 from t < 150 on 1.18 / 22.68 dB, fp32 throughout 1.18 / 22.85 dB.
FP32_BELOW_TIMESTEP = 150


class FeedRecorder:
    """Stands in for a denoiser session and keeps a copy of every feed it runs (calibration material)."""

    def __init__(self, session) -> None:
        self.session, self.feeds = session, []

    def run(self, names, feed):
        self.feeds.append({k: np.array(v, np.float32) for k, v in feed.items()})
        return self.session.run(names, feed)

    def __getattr__(self, name):
        return getattr(self.session, name)


def trajectory_feeds(model_dir: str, cases: Iterable[dict], steps: int = 20) -> List[Dict[str, np.ndarray]]:
    """Every denoiser feed of sampling runs through the package's fp32 graph. Each case: prompts, spatial
    (N, C, R, R), seeds, guidance and the metadata keywords of core.conditions.cond_vectors."""
    from .evaluate import TileGenerator

    feeds: List[Dict[str, np.ndarray]] = []
    for c in cases:
        gen = TileGenerator(model_dir, steps, c["guidance"], precision="fp32")
        rec = FeedRecorder(gen.m.denoiser)
        gen.m = dataclasses.replace(gen.m, denoiser=rec)
        gen.run(c["prompts"], c["spatial"], c["seeds"], **c.get("meta", {}))
        feeds += rec.feeds
    return feeds


def training_cases(data: str, cache: str, spatial_layout: dict, channels: int, res: int = 64) -> List[dict]:
    """Calibration runs on training-split material only (AID train scenes, maps train layouts)."""
    from ..core.conditions.encoding import layout_onehot
    from .captions import CLASS_PROMPT
    from .data import AID_GSD_150, MAPS_GSD_256, NYC_LONLAT, load_aid, load_maps

    rng = np.random.default_rng(7)
    aid_meta = dict(gsd_m=AID_GSD_150 * 150 / res)
    prompts = list(CLASS_PROMPT.values())
    cases = [dict(prompts=prompts, spatial=np.zeros((len(prompts), channels, res, res), np.float32),
                  seeds=[900_000 + i for i in range(len(prompts))], guidance=w, meta=aid_meta) for w in (1.5, 3.0, 5.0)]
    maps = load_maps(data, "train", cache)
    idx = rng.choice(len(maps["layout"]), 16, replace=False)
    sp = np.zeros((16, channels, res, res), np.float32)
    o, k = spatial_layout["layout"]
    for i, j in enumerate(idx):
        sp[i, o:o + k] = layout_onehot(maps["layout"][j, 64:192:2, 64:192:2].astype(np.uint8), k)
    cases.append(dict(prompts=[""] * 16, spatial=sp, seeds=list(range(910_000, 910_016)), guidance=3.0,
                      meta=dict(gsd_m=MAPS_GSD_256 * 128 / res, lon=NYC_LONLAT[0], lat=NYC_LONLAT[1], has_layout=True)))
    aid = load_aid(data, "train", cache)
    pick = rng.choice(len(aid["images"]), 16, replace=False)
    hr = np.stack([_resize(im, res) for im in aid["images"][pick]]).astype(np.float32) / 127.5 - 1
    hr = hr.transpose(0, 3, 1, 2)
    lr = hr.reshape(16, 3, res // 4, 4, res // 4, 4).mean((3, 5))
    sp = np.zeros((16, channels, res, res), np.float32)
    o, k = spatial_layout["guide"]
    sp[:8, o:o + k] = np.repeat(np.repeat(lr[:8], 4, axis=2), 4, axis=3)
    mask = np.zeros((res, res), np.float32)
    mask[res // 4:3 * res // 4, res // 4:3 * res // 4] = 1
    om, _ = spatial_layout["mask"]
    oi, ki = spatial_layout["masked_image"]
    sp[8:, om] = mask
    sp[8:, oi:oi + ki] = hr[8:] * (1 - mask)
    cases.append(dict(prompts=[""] * 8, spatial=sp[:8], seeds=list(range(920_000, 920_008)), guidance=3.0,
                      meta=dict(aid_meta, has_guide=True)))
    cases.append(dict(prompts=[""] * 8, spatial=sp[8:], seeds=list(range(930_000, 930_008)), guidance=3.0,
                      meta=dict(aid_meta, has_inpaint=True)))
    return cases


def _resize(u8: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(u8).resize((size, size), Image.BICUBIC), np.uint8)


def output_conv(path: str) -> str:
    """Name of the last convolution (the projection to the prediction): kept fp32, since its error goes straight
    into every step's prediction (measured: 32.1 dB from the fp32 images with it kept, 28.9 with it int8)."""
    import onnx

    convs = [n.name for n in onnx.load(path, load_external_data=False).graph.node if n.op_type == "Conv"]
    if not convs:
        raise ValueError(f"{path}: no convolution to quantize.")
    return convs[-1]  # exported graphs list nodes in topological order


def quantize_graph(src: str, dst: str, feeds: List[Dict[str, np.ndarray]], method: str = "minmax",
                   exclude: Optional[Iterable[str]] = None) -> None:
    """QDQ int8 graph of `src` (convolutions only; not the nodes named in `exclude`, by default the output
    convolution) with activation ranges from `feeds` (min/max over all of them)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    calib = {"minmax": CalibrationMethod.MinMax}[method]
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(src, pre, skip_symbolic_shape=True)  # dynamic sizes: ONNX shape inference only
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=list(QUANTIZED_OPS), activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=calib,
                        calibration_providers=["CPUExecutionProvider"],
                        nodes_to_exclude=list(exclude if exclude is not None else [output_conv(src)]))


def add_int8(model_dir: str, feeds: List[Dict[str, np.ndarray]], method: str = "minmax",
             info: Optional[dict] = None) -> dict:
    """Write denoiser_int8.onnx into a pixel package and record it in the manifest (file, sha256, how it was
    calibrated). The manifest is replaced atomically after the graph is in place."""
    pkg = read_package(model_dir)
    if pkg.kind != "pixel":
        raise ValueError(f"{model_dir}: int8 CPU graphs are made for pixel packages only.")
    man = json.loads(json.dumps(pkg.manifest))
    src = pkg.file(man["graphs"]["denoiser"]["file"])
    tmp = os.path.join(model_dir, f".{INT8_FILE}.tmp")
    quantize_graph(src, tmp, feeds, method)
    os.replace(tmp, pkg.file(INT8_FILE))
    man["graphs"]["denoiser"]["int8_file"] = INT8_FILE
    man["graphs"]["denoiser"]["int8"] = {"ops": list(QUANTIZED_OPS), "fp32_kept": [output_conv(src)],
                                         "fp32_below_timestep": FP32_BELOW_TIMESTEP,
                                         "weights": "int8 per channel",
                                         "activations": "uint8 per tensor", "calibration": method,
                                         "calibration_feeds": len(feeds), **(info or {})}
    man["files"][INT8_FILE] = {"sha256": sha256_file(pkg.file(INT8_FILE)), "bytes": os.path.getsize(pkg.file(INT8_FILE))}
    mtmp = pkg.file(".manifest.json.tmp")
    with open(mtmp, "w") as f:
        json.dump(man, f, indent=1)
    os.replace(mtmp, pkg.file("manifest.json"))
    return man


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/rsgen-base")
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", default="minmax", choices=["minmax"],
                    help="activation ranges (histogram methods need more memory than 24 GB for these feeds)")
    ap.add_argument("--out", default="", help="write a copy of the package here instead of changing --model")
    a = ap.parse_args(argv)
    model = a.model
    if a.out:
        if os.path.exists(a.out):
            shutil.rmtree(a.out)
        shutil.copytree(a.model, a.out)
        model = a.out
    pkg = read_package(model)
    c = pkg.manifest["conditions"]
    cases = training_cases(a.data, os.path.join("runs", "cache"), c["spatial_layout"], c["spatial_channels"])
    feeds = trajectory_feeds(model, cases)
    man = add_int8(model, feeds, a.method, {"calibration_material": "training split: 30 class prompts at "
                                            "guidance 1.5/3/5, 16 maps layouts, 8 guides, 8 inpainting holes; "
                                            "every step of 20-step DPM-Solver++ runs"})
    print(f"{model}: {INT8_FILE} ({man['files'][INT8_FILE]['bytes'] / 1e6:.1f} MB) from {len(feeds)} feeds")


if __name__ == "__main__":
    main()
