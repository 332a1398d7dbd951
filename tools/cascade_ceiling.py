"""How much of a scene's class survives at a coarser scale: the ceiling of the two-stage generation.

    tools/cascade_ceiling.py --data data [--model models/rsgen-base] [--every 4] [--json runs/cascade_ceiling.json]

The evaluation's scene classifier (`make eval`'s judge, loaded from runs/cache) on held-out real AID scenes at
64 px, and on the same scenes reduced f times by area averaging and brought back by bicubic interpolation, and
(f = 4) by the package's own super-resolution (guide = the reduced scene, guide consistency 1, empty prompt,
20 steps). With a perfect coarse base model, a cascade through this fine model could reach the last figure; the
gap between it and the two-stage figure is the base model's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rsgen_qgis.training.data import AID_GSD_150, load_aid  # noqa: E402
from rsgen_qgis.training.evaluate import SceneNet, resize, to_tensor  # noqa: E402,F401
from rsgen_qgis.training.tilegen import RES, TileGenerator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="models/rsgen-base")
    ap.add_argument("--judge", default="runs/cache/judge_classifier_cosine_3000steps_7760x30.pt",
                    help="the scene classifier `make eval` trained and cached")
    ap.add_argument("--every", type=int, default=4, help="use every N-th held-out scene")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if not os.path.exists(a.judge):
        raise SystemExit(f"{a.judge}: no cached judge; run `make eval DATA=...` first.")
    import __main__
    __main__.SceneNet = SceneNet  # the judge was pickled from evaluate's __main__
    clf = torch.load(a.judge, map_location="cpu", weights_only=False)
    te = load_aid(a.data, "test", os.path.join("runs", "cache"))
    sel = np.arange(0, len(te["labels"]), a.every)
    real, labels = resize(to_tensor(te["images"][sel]), RES), te["labels"][sel]

    def top1(x: torch.Tensor) -> float:
        with torch.no_grad():
            logits = torch.cat([clf(x[i:i + 256]) for i in range(0, len(x), 256)])
        return float((logits.argmax(1).numpy() == labels).mean())

    res = {"scenes": len(sel), "real_64px": top1(real)}
    u8 = ((real + 1) * 127.5).round().clamp(0, 255)
    gen = TileGenerator(a.model, 20, 3.0)
    for f in (2, 4, 8):
        lr = F.avg_pool2d(u8, f)
        bic = F.interpolate(lr, size=(RES, RES), mode="bicubic", align_corners=False).round().clamp(0, 255)
        res[f"bicubic_from_1/{f}"] = top1(bic / 127.5 - 1)
        if f == 4:
            g = lr / 127.5 - 1
            sp = np.zeros((len(lr), gen.C, RES, RES), np.float32)
            o, k = gen.slay["guide"]
            sp[:, o:o + k] = F.interpolate(g, size=(RES, RES), mode="bilinear", align_corners=False).numpy()
            sr = gen.run([""] * len(lr), sp, list(range(len(lr))), guides=g.numpy(), gsd_m=AID_GSD_150 * 150 / RES,
                         has_guide=True)
            res["model_sr_from_1/4"] = top1(torch.from_numpy(sr).float() / 127.5 - 1)
        print(json.dumps(res), flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
