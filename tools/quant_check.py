"""How far the CPU's default graph (int8, fp32 for the last steps: core.runtime.models.SteppedDenoiser) moves a package's
images from its exact fp32 graph.

    tools/quant_check.py --model models/rsgen-base --data data [--json runs/quant_check.json]

The same tiles (class prompts, and held-out maps layouts without a prompt; same seeds, 20 DPM-Solver++ steps,
guidance 3) with precision "auto" (int8) and "fp32"; prints PSNR int8 vs fp32 beside PSNR between two seed
draws of the fp32 graph (what a different seed changes).
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
    a = ap.parse_args()
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


if __name__ == "__main__":
    main()
