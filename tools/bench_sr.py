"""Super-resolution benchmark: rsgen-base through the 4x guide condition vs bicubic, PSNR and SSIM on real imagery.

    .venv/bin/python tools/bench_sr.py [--image /work/data/demo/orthophoto.tif] [--patches 4] [--size 128]
                                       [--steps 20] [--seed 0]

Patches of SIZE x SIZE px are cut from the image (a regular spread, skipping patches with no-data), each is
reduced 4x by area averaging (the "low-res raster"), then brought back to SIZE x SIZE by (a) bicubic interpolation,
(b) the guide's own bilinear upsampling (what the model is given), (c) the model (generate() on the same
footprint with the low-res patch as guide, empty prompt), held to the guide (guide consistency 1, the default:
"rsgen") and free (0: "rsgen_free"). PSNR (dB, 8-bit) and SSIM (Gaussian window sigma 1.5,
on luma) against the original patch are printed per method, averaged over patches. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse)) if mse > 0 else float("inf")


def ssim(a, b) -> float:
    from scipy.ndimage import gaussian_filter

    def luma(x):
        x = x.astype(np.float64)
        return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]

    x, y = luma(a), luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    f = lambda z: gaussian_filter(z, 1.5, truncate=3.5)  # noqa: E731
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s[5:-5, 5:-5].mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="/work/data/demo/orthophoto.tif")
    ap.add_argument("--patches", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import rasterio
    from PIL import Image

    from rsgen_qgis.core.conditions.encoding import guide_upsample
    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.request import Conditions, GenerationRequest

    n, f = a.size, 4
    with rasterio.open(a.image) as ds:
        img = ds.read()
        valid = ds.read_masks(1) > 0 if ds.count < 4 else img[3] > 0
        crs, tf = ds.crs.to_wkt(), ds.transform
    rgb = img[:3]
    H, W = rgb.shape[1:]
    rows = np.linspace(0, H - n, 3 * a.patches).astype(int)
    cols = np.linspace(0, W - n, 3).astype(int)
    spots = [(r, c) for r in rows for c in cols if valid[r:r + n, c:c + n].all()]
    spots = [spots[round(i * (len(spots) - 1) / max(1, a.patches - 1))] for i in range(min(a.patches, len(spots)))]
    scores = {k: {"psnr": [], "ssim": []} for k in ("bicubic", "bilinear_guide", "rsgen", "rsgen_free")}
    tmp = tempfile.mkdtemp(prefix="rsgen-sr-")
    for i, (r, c) in enumerate(spots):
        hr = rgb[:, r:r + n, c:c + n]
        lr = hr.reshape(3, n // f, f, n // f, f).astype(np.float64).mean((2, 4)).round().astype(np.uint8)
        bic = np.stack([np.asarray(Image.fromarray(ch).resize((n, n), Image.BICUBIC)) for ch in lr])
        bil = np.clip(np.round(guide_upsample(lr.astype(np.float32), (n, n))), 0, 255).astype(np.uint8)
        x0, y0 = tf * (c, r)
        x1, y1 = tf * (c + n, r + n)
        out = {}
        for key, w in (("rsgen", 1.0), ("rsgen_free", 0.0)):
            req = GenerationRequest(extent=(x0, y1, x1, y0), crs=crs, output=os.path.join(tmp, f"{key}{i}.tif"),
                                    width=n, height=n, steps=a.steps, seed=a.seed + i, conditions=Conditions(guide=lr),
                                    guide_consistency=w)
            with rasterio.open(generate(req).path) as ds:
                out[key] = ds.read()
        for k, v in (("bicubic", bic), ("bilinear_guide", bil), ("rsgen", out["rsgen"]), ("rsgen_free", out["rsgen_free"])):
            scores[k]["psnr"].append(psnr(v, hr))
            scores[k]["ssim"].append(ssim(v, hr))
        print(f"patch {i + 1}/{len(spots)} at row {r}, col {c}: " + ", ".join(
            f"{k} {scores[k]['psnr'][-1]:.2f} dB / {scores[k]['ssim'][-1]:.3f}" for k in scores), flush=True)
    summary = {k: {m: round(float(np.mean(v)), 3) for m, v in d.items()} for k, d in scores.items()}
    print(json.dumps({"image": a.image, "patches": len(spots), "size": n, "factor": f, "steps": a.steps,
                      "mean": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
