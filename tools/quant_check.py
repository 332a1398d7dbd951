"""How far the CPU's default graph (int8, fp32 for the last steps: core.runtime.models.SteppedDenoiser) moves a package's
images from its exact fp32 graph.

    tools/quant_check.py --model models/rsgen-base --data data [--json runs/quant_check.json]

The same tiles (class prompts, and held-out maps layouts without a prompt; same seeds, 20 DPM-Solver++ steps,
guidance 3) with precision "auto" (int8) and "fp32"; prints PSNR int8 vs fp32 beside PSNR between two seed
draws of the fp32 graph (what a different seed changes).
A latent package (manifest kind "latent") goes through the run-time engine at its native tile
(training.judge.class_tiles; held-out layouts by training.fidelity.layout_tiles), default sampler and steps; "auto"
is then its int8 denoiser and the autoencoder's int8 decoder where they have them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rsgen_qgis.training.evaluate import psnr  # noqa: E402
from rsgen_qgis.training.tilegen import TileGenerator, comparison_cases  # noqa: E402


def mean_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([psnr(x, y) for x, y in zip(a, b)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/rsgen-base")
    ap.add_argument("--data", default="", help="prepared data (for held-out layouts); without it prompts only")
    ap.add_argument("--seeds", type=int, default=2, help="tiles per class prompt")
    ap.add_argument("--layouts", type=int, default=60)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--json", default="")
    ap.add_argument("--threads", type=int, default=1, help="latent packages: ONNX Runtime threads")
    a = ap.parse_args()
    with open(os.path.join(a.model, "manifest.json")) as f:
        if json.load(f).get("kind") == "latent":
            return latent(a)
    cases = comparison_cases(a.data, a.seeds, a.layouts)
    exact = TileGenerator(a.model, 20, a.guidance, precision="fp32")
    fast = TileGenerator(a.model, 20, a.guidance, precision="auto")
    if fast.m.variant != "int8":
        sys.exit(f"{a.model}: no int8 CPU graph in this package (run rsgen_qgis.training.quantize)")
    out = {}
    for name, (p, sp, sd, meta) in cases.items():
        ref = exact.run(p, sp, sd, **meta)
        other_seed = exact.run(p, sp, [s + 100_000 for s in sd], **meta)
        q = fast.run(p, sp, sd, **meta)
        r = {"tiles": len(p), "psnr_int8_vs_fp32": mean_psnr(q, ref),
             "psnr_fp32_other_seed_vs_fp32": mean_psnr(other_seed, ref),
             "mean_abs_diff_int8_vs_fp32_u8": float(np.abs(q.astype(float) - ref).mean())}
        out[name] = r
        print(name, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


def latent(a) -> None:
    import time

    from rsgen_qgis.core.runtime.models import load
    from rsgen_qgis.training.data import load_maps
    from rsgen_qgis.training.fidelity import LAYOUT_CROP, layout_tiles
    from rsgen_qgis.training.judge import AID_CLASSES, class_tiles, model_settings

    fast = load(a.model, providers=["CPUExecutionProvider"], threads=a.threads)
    if fast.variant != "int8" and getattr(fast.autoencoder, "variant", "fp32") != "int8":
        sys.exit(f"{a.model}: no int8 CPU graph (run rsgen_qgis.training.quantize)")
    s = model_settings(a.model, None, a.guidance, None, None)
    quiet = lambda msg: None  # noqa: E731
    out = {"denoiser_graph": fast.variant, "decoder_graph": getattr(fast.autoencoder, "variant", "fp32"),
           "steps": s["steps"], "sampler": s["sampler"], "guidance": s["guidance"]}
    seconds = {}

    def prompts(precision, offset=0):
        t = time.time()
        r = class_tiles(a.model, AID_CLASSES, a.seeds, s["steps"], s["guidance"], s["sampler"], precision=precision,
                        seed_offset=offset, threads=a.threads, log=quiet)["tiles"]
        seconds.setdefault(precision, time.time() - t)
        return r

    def layouts(precision, offset=0):
        va = load_maps(a.data, "val", os.path.join("runs", "cache"))
        lo, hi = LAYOUT_CROP
        ids = va["layout"][:a.layouts, lo:hi, lo:hi]
        return layout_tiles(a.model, int(fast.package.manifest["tile"]["size"]), ids, s, offset, a.threads,
                            precision)

    for name, gen in (("prompt", prompts), ("layout", layouts)):
        if name == "layout" and not a.data:
            continue
        ref, q, other = gen("fp32"), gen("auto"), gen("fp32", 100_000)
        r = {"tiles": len(ref), "psnr_int8_vs_fp32": mean_psnr(q, ref), "psnr_fp32_other_seed_vs_fp32":
             mean_psnr(other, ref), "mean_abs_diff_int8_vs_fp32_u8": float(np.abs(q.astype(float) - ref).mean())}
        out[name] = r
        print(name, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    out["prompt_seconds"] = {"fp32": round(seconds["fp32"], 1), "auto": round(seconds["auto"], 1)}
    print("prompt tiles, seconds:", out["prompt_seconds"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
