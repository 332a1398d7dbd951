"""How closely a guidance-distilled package reproduces its teacher's classifier-free guidance.

    tools/distill_check.py --teacher runs/pkg03 --student models/rsgen-base --data data

For guidance 1, 3 and 5: the same tiles (class prompts, and held-out maps layouts without a prompt; same seeds,
20 DPM-Solver++ steps) from the teacher with two evaluations per step and from the student with one; prints
PSNR student vs teacher beside PSNR teacher-at-w vs teacher-at-1 (how far guidance moves the image: the
student must follow that move, not just stay near the unguided image). Writes a JSON with --json.
A latent package (manifest kind "latent") is compared on the class prompts only, through the run-time engine at
its native tile (training.judge.class_tiles: 256 px, the evaluation's seeds), with its default sampler and steps,
fp32 graphs for both.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--data", default="", help="prepared data (for held-out layouts); without it prompts only")
    ap.add_argument("--seeds", type=int, default=2, help="tiles per class prompt")
    ap.add_argument("--layouts", type=int, default=60)
    ap.add_argument("--json", default="")
    ap.add_argument("--threads", type=int, default=1, help="latent packages: ONNX Runtime threads")
    a = ap.parse_args()
    with open(os.path.join(a.teacher, "manifest.json")) as f:
        if json.load(f).get("kind") == "latent":
            return latent(a)
    cases = comparison_cases(a.data, a.seeds, a.layouts)
    out = {}
    for name, (p, sp, sd, meta) in cases.items():
        ref1 = TileGenerator(a.teacher, 20, 1.0).run(p, sp, sd, **meta)
        for w in (1.0, 3.0, 5.0):
            t = ref1 if w == 1.0 else TileGenerator(a.teacher, 20, w).run(p, sp, sd, **meta)
            s = TileGenerator(a.student, 20, w).run(p, sp, sd, **meta)
            r = {"tiles": len(p), "psnr_student_vs_teacher": float(np.mean([psnr(x, y) for x, y in zip(s, t)])),
                 "psnr_teacher_vs_teacher_w1": float(np.mean([psnr(x, y) for x, y in zip(t, ref1)])) if w != 1.0
                 else None}
            out[f"{name}_w{w:g}"] = r
            print(name, f"w={w:g}", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


def latent(a) -> None:
    from rsgen_qgis.training.judge import AID_CLASSES, class_tiles, model_settings

    s = model_settings(a.teacher, None, None, None, None)
    quiet = lambda msg: None  # noqa: E731

    def tiles(model, w):
        return class_tiles(model, AID_CLASSES, a.seeds, s["steps"], w, s["sampler"], threads=a.threads,
                           precision="fp32", log=quiet)["tiles"]  # the distillation alone, not the int8 graphs

    ref1, out = tiles(a.teacher, 1.0), {"steps": s["steps"], "sampler": s["sampler"]}
    for w in (1.0, 3.0, 5.0):
        t = ref1 if w == 1.0 else tiles(a.teacher, w)
        st = tiles(a.student, w)
        r = {"tiles": len(t), "psnr_student_vs_teacher": float(np.mean([psnr(x, y) for x, y in zip(st, t)])),
             "psnr_teacher_vs_teacher_w1": float(np.mean([psnr(x, y) for x, y in zip(t, ref1)])) if w != 1.0
             else None}
        out[f"prompt_w{w:g}"] = r
        print(f"prompt w={w:g}", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
