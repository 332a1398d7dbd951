"""At which noise level a model loses the real distribution: held-out real AID scenes noised to a level and brought
back by the model (the engine's own variation path, `Conditions(image=..., strength=s)`, the class caption as the
prompt), then KID in the ImageNet judge's features against the other half of the held-out scenes, as
`judge kid` measures generated tiles. Strength 1 is plain generation; strength s starts at the noise level of the
first kept step of the package's default sampling. Not a test: it needs prepared data.

    .venv/bin/python tools/variation_kid.py --data DATA --model models/rsgen-base-1 \
        [--strengths 0.2,0.4,0.6,0.8] [--per-class 8] [--gsd 4] [--threads 2] [--out runs/variation_kid.json]

The real halves are judge kid's (40 held-out scenes a class, halves by seed 0); the scenes brought back are the
first per-class of each class in half A, so every figure compares with judge kid's `real_floor (A vs B)`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--strengths", default="0.2,0.4,0.6,0.8")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--gsd", type=float, default=4.0, help="the AID scene's 150 px at this GSD (4: as trained)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/variation_kid.json")
    a = ap.parse_args(argv)
    from rsgen_qgis.core.engine.generate import generate_array
    from rsgen_qgis.core.request import Conditions, GenerationRequest
    from rsgen_qgis.training.captions import CLASS_PROMPT
    from rsgen_qgis.training.data import load_aid
    from rsgen_qgis.training.judge import CRS, X0, Y0, features, kid_entry, model_settings, pretrained, real_halves

    aid = load_aid(a.data, "test", os.path.join(ROOT, "runs", "cache"))
    imgs, y = aid["images"], aid["labels"]
    keep = np.concatenate([np.flatnonzero(y == k)[:40] for k in range(len(aid["classes"]))])
    imgs, y = imgs[keep], y[keep]
    ia, ib = real_halves(len(imgs), 0)
    net = pretrained()
    fb = features(net, imgs[ib])
    sel = np.concatenate([ia[y[ia] == k][:a.per_class] for k in range(len(aid["classes"]))])
    s = model_settings(a.model, None, None, None, None)
    px = imgs.shape[1]
    x0, y0 = round(X0 / a.gsd) * a.gsd, round(Y0 / a.gsd) * a.gsd
    res = {"model": a.model, "settings": s, "gsd": a.gsd, "scenes": int(len(sel)), "reference": int(len(ib)),
           "real_a_subset": kid_entry(features(net, imgs[sel]), fb, 100, min(500, len(sel)), 0), "strengths": {}}
    for st in (float(v) for v in a.strengths.split(",")):
        t0, tiles = time.time(), []
        for j, i in enumerate(sel):
            req = GenerationRequest(extent=(x0, y0, x0 + px * a.gsd, y0 + px * a.gsd), crs=CRS, gsd=a.gsd,
                                    output="", prompt=CLASS_PROMPT[aid["classes"][y[i]]], seed=j, steps=s["steps"],
                                    guidance=s["guidance"], sampler=s["sampler"], model=a.model,
                                    conditions=Conditions(image=np.ascontiguousarray(imgs[i].transpose(2, 0, 1)),
                                                          strength=st))
            tiles.append(generate_array(req, providers=["CPUExecutionProvider"], threads=a.threads).rgb
                         .transpose(1, 2, 0))
        e = kid_entry(features(net, np.stack(tiles)), fb, 100, min(500, len(tiles)), 0)
        res["strengths"][str(st)] = {**e, "seconds": round(time.time() - t0, 1)}
        print(f"strength {st}: KID x1e3 {1e3 * e['kid']:.1f} +- {1e3 * e['kid_std']:.1f} ({time.time() - t0:.0f} s)",
              flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
