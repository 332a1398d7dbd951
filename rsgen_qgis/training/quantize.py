"""Int8 CPU graphs: a package's denoiser calibrated on real sampling trajectories, an autoencoder's decoder on real
latents.

    python -m rsgen_qgis.training.quantize --model models/rsgen-base --data DATA
    python -m rsgen_qgis.training.quantize --model models/rsgen-base-1 --data DATA      (a latent package)
    python -m rsgen_qgis.training.quantize --autoencoder models/taef2 --latents runs/latents/train.s0.npz

Static quantization with ONNX Runtime (QDQ format): the convolutions get per-output-channel int8 weights and
uint8 activations whose ranges come from calibration; everything else (normalisation, attention, the time and
condition embeddings) stays fp32. The calibration inputs are what the denoiser really sees: the inputs of every
step of 20-step DPM-Solver++ runs through the package's own graphs (core sampler and condition encoding), on
training-split material only - class prompts at several guidance scales, maps layouts, low-resolution guides
and inpainting holes from the training halves. The graph is written beside the others as denoiser_int8.onnx,
the manifest gains `graphs.denoiser.int8_file` and the file's sha256, and the run time uses it on the CPU
unless precision "fp32" is asked for (core.runtime.models.load). Figures of its cost: MODEL_CARD.md.

Latent packages: the calibration runs go through the run-time engine itself (core.engine.single.sample_canvas,
the fp32 graph, the package's default sampler and steps) over the same kinds of training-split material at the
native tile. Autoencoders: the decoder's convolutions (not the last one) on the raw latents of a training pack
(AID scenes and maps tiles); the package gains `autoencoder.decoder.int8_file`, which the run time decodes with
on the CPU at precision "auto" (core.runtime.autoencoder). Both use 7-bit weights (reduce_range): without VNNI,
x86 CPUs multiply uint8 by int8 in 16-bit sums that saturate with full-range weights, so the same graph would
give other images there; with 7 bits every x86-64 CPU computes the same integers.
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
from .manifest_write import replace_manifest

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


def latent_feeds(model_dir: str, data: str, cache: str, n_prompts: int = 30, n_layouts: int = 8, n_guides: int = 4,
                 n_holes: int = 4) -> List[Dict[str, np.ndarray]]:
    """Every denoiser feed of sampling runs of a latent package through the run-time engine (fp32 graph, the
    package's default sampler and steps, native tile) on training-split material only: class prompts at guidance
    1.5 / 3 / 5 in turn over an AID scene's 600 m, maps-train layouts without a prompt (2.34 m, New York), AID-train
    scenes as 4x guides and with a centre hole to inpaint."""
    from ..core.engine.single import sample_canvas
    from ..core.geo.georef import grid_for_request
    from ..core.request import Conditions, GenerationRequest
    from ..core.runtime.models import load
    from .captions import CLASS_PROMPT
    from .data import MAPS_GSD_256, NYC_LONLAT, load_aid, load_maps
    from .fidelity import _utm_for, nearest

    base = load(model_dir, providers=["CPUExecutionProvider"], precision="fp32")
    rec = FeedRecorder(base.denoiser)
    model = dataclasses.replace(base, denoiser=rec)
    d = base.package.manifest.get("defaults", {})
    px = int(base.package.manifest["tile"]["size"])
    rng = np.random.default_rng(7)
    gi = base.package.manifest["conditions"].get("guidance_input")  # a distilled model's scales: within its range
    lo_w, hi_w = (gi["range"] if gi else (1.0, 20.0))[:2]

    def run(seed, crs, x, y, gsd, prompt="", guidance=3.0, cond=None):
        x0, y0 = round(x / gsd) * gsd, round(y / gsd) * gsd
        req = GenerationRequest(extent=(x0, y0, x0 + px * gsd, y0 + px * gsd), crs=crs, gsd=gsd, output="",
                                prompt=prompt, seed=seed, steps=int(d.get("steps", 20)),
                                guidance=min(max(guidance, lo_w), hi_w), sampler=d.get("sampler", "dpmpp_2m"),
                                model=model_dir, conditions=cond or Conditions())
        sample_canvas(req, model, grid_for_request(req), lambda f, m: None, lambda: False)

    crs, x, y = _utm_for(*NYC_LONLAT)
    aid_gsd = 600.0 / px
    prompts = list(CLASS_PROMPT.values())
    for i in range(n_prompts):
        run(900_000 + i, crs, x, y, aid_gsd, prompts[i % len(prompts)], (1.5, 3.0, 5.0)[i % 3])
    maps = load_maps(data, "train", cache)
    for i, j in enumerate(rng.choice(len(maps["layout"]), n_layouts, replace=False)):
        ids = maps["layout"][j].astype(np.uint8)
        run(910_000 + i, crs, x, y, MAPS_GSD_256 * 256 / ids.shape[0], cond=Conditions(layout=nearest(ids, px)))
    aid = load_aid(data, "train", cache)
    pick = rng.choice(len(aid["images"]), n_guides + n_holes, replace=False)
    for i, j in enumerate(pick):
        img = np.ascontiguousarray(_resize(aid["images"][j], px).transpose(2, 0, 1))
        if i < n_guides:
            guide = img.reshape(3, px // 4, 4, px // 4, 4).mean((2, 4)).round().astype(np.uint8)
            run(920_000 + i, crs, x, y, aid_gsd, cond=Conditions(guide=guide))
        else:
            mask = np.zeros((px, px), bool)
            mask[px // 4:3 * px // 4, px // 4:3 * px // 4] = True
            run(930_000 + i, crs, x, y, aid_gsd, cond=Conditions(mask=mask, image=img))
    return rec.feeds


def decoder_feeds(ae_dir: str, pack: str, n: int = 24, seed: int = 7) -> List[Dict[str, np.ndarray]]:
    """Calibration inputs for an autoencoder's decoder: raw latents (standardised ones mapped back with the
    package's shift and scale) of a training pack, n AID scenes (18 x 18 cells) and n maps tiles (40 x 40-cell
    crops), two a feed."""
    from .latent_data import load_pack

    with open(os.path.join(ae_dir, "manifest.json")) as f:
        spec = json.load(f)["autoencoder"]
    st = spec.get("latent_stats") or {}
    c = int(spec["channels"])
    shift = np.asarray(st.get("shift", [0.0] * c), np.float32).reshape(1, -1, 1, 1)
    scale = np.asarray(st.get("scale", [1.0] * c), np.float32).reshape(1, -1, 1, 1)
    p = load_pack(pack)
    rng = np.random.default_rng(seed)
    name = spec["decoder"].get("input", "latent")
    feeds = []
    for key, crop in (("aid_z", 18), ("maps_z", 40)):
        z = p[key]
        if not len(z):
            continue
        idx = np.sort(rng.choice(len(z), min(n, len(z)), replace=False))
        zc = z[idx][:, :, :crop, :crop].astype(np.float32) * scale + shift
        feeds += [{name: zc[i:i + 2]} for i in range(0, len(zc), 2)]
    if not feeds:
        raise ValueError(f"{pack}: no latents to calibrate with.")
    return feeds


def add_decoder_int8(ae_dir: str, feeds: List[Dict[str, np.ndarray]], info: Optional[dict] = None) -> dict:
    """Write decoder_int8.onnx into an autoencoder package (convolutions int8 but the last, 7-bit weights) and
    record it under autoencoder.decoder (int8_file, how it was made) and files (sha256); the manifest is replaced
    atomically after the graph is in place. The fp32 decoder, which models pin by sha256, is unchanged."""
    pkg = read_package(ae_dir)
    if pkg.kind != "autoencoder":
        raise ValueError(f"{ae_dir}: not an autoencoder package.")
    man = json.loads(json.dumps(pkg.manifest))
    dec = man["autoencoder"]["decoder"]
    src = pkg.file(dec["file"])
    name = "decoder_int8.onnx"
    tmp = os.path.join(pkg.path, f".{name}.tmp")
    quantize_graph(src, tmp, feeds, reduce_range=True)
    dec["int8_file"] = name
    dec["int8"] = {"ops": list(QUANTIZED_OPS), "fp32_kept": [output_conv(src)], "weights": "int8 per channel, 7-bit "
                   "range", "activations": "uint8 per tensor", "calibration": "minmax",
                   "calibration_feeds": len(feeds), **(info or {})}
    return _install(pkg, man, tmp, name)


def _install(pkg, man: dict, tmp: str, name: str) -> dict:
    """Move the graph written at tmp into the package as `name`, list it (sha256, bytes) in man, and replace the
    manifest with man atomically, after the graph is in place."""
    dst = os.path.join(pkg.path, name)  # a new file: pkg.file() gives only listed, verified ones
    os.replace(tmp, dst)
    man["files"][name] = {"sha256": sha256_file(dst), "bytes": os.path.getsize(dst)}
    replace_manifest(pkg.path, man)
    return man


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
                   exclude: Optional[Iterable[str]] = None, reduce_range: bool = False) -> None:
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
                        calibration_providers=["CPUExecutionProvider"], reduce_range=reduce_range,
                        nodes_to_exclude=list(exclude if exclude is not None else [output_conv(src)]))


def add_int8(model_dir: str, feeds: List[Dict[str, np.ndarray]], method: str = "minmax",
             info: Optional[dict] = None) -> dict:
    """Write denoiser_int8.onnx into a pixel or latent package and record it in the manifest (file, sha256, how
    it was calibrated). The manifest is replaced atomically after the graph is in place."""
    pkg = read_package(model_dir)
    if pkg.kind not in ("pixel", "latent"):
        raise ValueError(f"{model_dir}: int8 CPU graphs are made for rsgen pixel and latent packages only.")
    reduce_range = pkg.kind == "latent"  # (the pixel package keeps the recipe it was measured with)
    man = json.loads(json.dumps(pkg.manifest))
    src = pkg.file(man["graphs"]["denoiser"]["file"])
    tmp = os.path.join(model_dir, f".{INT8_FILE}.tmp")
    quantize_graph(src, tmp, feeds, method, reduce_range=reduce_range)
    man["graphs"]["denoiser"]["int8_file"] = INT8_FILE
    man["graphs"]["denoiser"]["int8"] = {"ops": list(QUANTIZED_OPS), "fp32_kept": [output_conv(src)],
                                         "fp32_below_timestep": FP32_BELOW_TIMESTEP,
                                         "weights": "int8 per channel" + (", 7-bit range" if reduce_range else ""),
                                         "activations": "uint8 per tensor", "calibration": method,
                                         "calibration_feeds": len(feeds), **(info or {})}
    return _install(pkg, man, tmp, INT8_FILE)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/rsgen-base")
    ap.add_argument("--data", help="prepared data (a model's calibration material)")
    ap.add_argument("--autoencoder", help="quantize this autoencoder package's decoder instead of a model's denoiser")
    ap.add_argument("--latents", help="with --autoencoder: a latent pack (training/latent_data.py) to calibrate on")
    ap.add_argument("--method", default="minmax", choices=["minmax"],
                    help="activation ranges (histogram methods need more memory than 24 GB for these feeds)")
    ap.add_argument("--out", default="", help="write a copy of the package here instead of changing --model")
    a = ap.parse_args(argv)
    if a.autoencoder:
        if not a.latents:
            ap.error("--autoencoder needs --latents (a training pack's latents to calibrate on)")
        feeds = decoder_feeds(a.autoencoder, a.latents)
        man = add_decoder_int8(a.autoencoder, feeds, {"calibration_material": f"raw latents of {len(feeds)} pairs "
                               "from a training pack: AID train scenes (18 x 18 cells) and maps train tiles (40 x 40-cell "
                               "crops)"})
        f = man["autoencoder"]["decoder"]["int8_file"]
        print(f"{a.autoencoder}: {f} ({man['files'][f]['bytes'] / 1e6:.1f} MB) from {len(feeds)} feeds")
        return
    if not a.data:
        ap.error("--data is needed to calibrate a model's denoiser")
    model = a.model
    if a.out:
        if os.path.exists(a.out):
            shutil.rmtree(a.out)
        shutil.copytree(a.model, a.out)
        model = a.out
    pkg = read_package(model)
    c = pkg.manifest["conditions"]
    if pkg.kind == "latent":
        feeds = latent_feeds(model, a.data, os.path.join("runs", "cache"))
        material = ("training split through the run-time engine at the native tile: 30 class prompts at guidance "
                    "1.5/3/5 in turn, 8 maps layouts, 4 guides, 4 inpainting holes; every step of the package's "
                    "default sampling")
    else:
        cases = training_cases(a.data, os.path.join("runs", "cache"), c["spatial_layout"], c["spatial_channels"])
        feeds = trajectory_feeds(model, cases)
        material = ("training split: 30 class prompts at guidance 1.5/3/5, 16 maps layouts, 8 guides, 8 inpainting "
                    "holes; every step of 20-step DPM-Solver++ runs")
    man = add_int8(model, feeds, a.method, {"calibration_material": material})
    print(f"{model}: {INT8_FILE} ({man['files'][INT8_FILE]['bytes'] / 1e6:.1f} MB) from {len(feeds)} feeds")


if __name__ == "__main__":
    main()
