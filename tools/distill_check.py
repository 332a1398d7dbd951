"""How closely a guidance-distilled package reproduces its teacher's classifier-free guidance.

    tools/distill_check.py --teacher runs/pkg03 --student models/rsgen-base --data data

For guidance 1, 3 and 5: the same tiles (class prompts, and held-out maps layouts without a prompt; same seeds,
20 DPM-Solver++ steps) from the teacher with two evaluations per step and from the student with one; prints
PSNR student vs teacher beside PSNR teacher-at-w vs teacher-at-1 (how far guidance moves the image: the
student must follow that move, not just stay near the unguided image). Writes a JSON with --json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rsgen_qgis.core.conditions import layout_onehot  # noqa: E402
from rsgen_qgis.training.captions import CLASS_PROMPT  # noqa: E402
from rsgen_qgis.training.data import AID_GSD_150, MAPS_GSD_256, NYC_LONLAT, load_maps  # noqa: E402
from rsgen_qgis.training.evaluate import RES, TileGenerator, psnr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--data", default="", help="prepared data (for held-out layouts); without it prompts only")
    ap.add_argument("--seeds", type=int, default=2, help="tiles per class prompt")
    ap.add_argument("--layouts", type=int, default=60)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    prompts = [p for p in CLASS_PROMPT.values() for _ in range(a.seeds)]
    seeds = list(range(len(prompts)))
    cases = {"prompt": (prompts, np.zeros((len(prompts), 13, RES, RES), np.float32), seeds,
                        dict(gsd_m=AID_GSD_150 * 150 / RES))}
    if a.data:
        va = load_maps(a.data, "val", os.path.join("runs", "cache"))
        lay = va["layout"][:a.layouts, 64:192:2, 64:192:2]
        sp = np.zeros((len(lay), 13, RES, RES), np.float32)
        for i, ids in enumerate(lay):
            sp[i, :6] = layout_onehot(ids.astype(np.uint8))
        cases["layout"] = ([""] * len(lay), sp, list(range(len(lay))),
                           dict(gsd_m=MAPS_GSD_256 * 128 / RES, lon=NYC_LONLAT[0], lat=NYC_LONLAT[1], has_layout=True))
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


if __name__ == "__main__":
    main()
