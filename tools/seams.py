"""Seam figures for the README: the fused large-area path vs naive tiling, with the real model.

    .venv/bin/python tools/seams.py [--size 512] [--steps 10] [--gsd 4] [--out runs/seams]

- fused: one large-area request (core.engine.blocks: world-anchored blocks of overlapping windows fused every
  step, blocks cross-faded), measured on the window grid (window starts and ends, world-anchored), on the
  block grid (band edges, band centres) and on every line inside the bands where blocks are cross-faded;
- naive: the same area as independent model tiles (64 px for rsgen-base, 256 px for a TAEF2 latent model) (one request per tile, one window each, same world noise,
  no overlap, no fusion), measured on the tile grid.
Latent models (--model a latent package): the block geometry is on the latent grid; every line measured here
is in pixels (latent lines times the factor). Each figure has its shifted-grid control (same lines moved by half a period). Prints a table and writes
runs/seams/seams.json (+ the two GeoTIFFs).

One image's figures move with the seed by several hundredths (controls too: 0.94-1.06 over a few seeds at
1024 px), as much as the 0.95-1.05 target band is wide, so `--seeds 11,12,13,14,15` runs each seed into
OUT/seed<N> and prints, per row, the mean ratio and control over the seeds with their range (OUT/summary.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MODEL = os.path.join(ROOT, "models", "rsgen-base")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="side of the area in pixels")
    ap.add_argument("--gsd", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--prompt", default="a satellite image of medium density residential area with trees")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "seams"))
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32"],
                    help="denoiser graph (auto: the package's int8 graph on the CPU, as the plugin runs it)")
    ap.add_argument("--measure-only", action="store_true",
                    help="re-measure fused.tif / naive.tif already in --out (no generation)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds: one run each, then the mean over them")
    ap.add_argument("--blend-radii", default="", help="detail bands of the block cross-fade, e.g. 4 for the single "
                    "band used before 2026-12-03 (default: core.engine.blockblend.RADII), to compare the two")
    ap.add_argument("--block-windows", type=int, default=None, help="block footprint: a tile plus this many window "
                    "strides (default: the package's default, core.engine.blocks.default_block_windows)")
    a = ap.parse_args(argv)
    if a.blend_radii:
        import functools

        from rsgen_qgis.core.engine import blocks as _blocks

        radii = tuple(int(v) for v in a.blend_radii.split(","))
        _blocks.BlockBlender = functools.partial(_blocks.BlockBlender, radii=radii)
    if a.seeds:
        return over_seeds(a)

    import numpy as np
    import rasterio

    from rsgen_qgis.core.engine.blocks import BlockLayout
    from rsgen_qgis.core.runtime.models import load
    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.request import GenerationRequest
    from rsgen_qgis.core.engine.seams import seam_report

    os.makedirs(a.out, exist_ok=True)
    lay = BlockLayout.for_model(load(a.model), a.block_windows)
    # Near Swellendam (UTM 34S). The top-left pixel sits just past a block's band (world column and row
    # index = band mod block), so the area's first pixels are covered by one block only.
    B, D = lay.px_block, lay.px_band
    xb = round(453000.0 / a.gsd / B) * B
    yb = round(6236000.0 / a.gsd / B) * B
    x0 = (xb + D) * a.gsd
    ytop = (yb - D) * a.gsd
    common = dict(crs="EPSG:32734", gsd=a.gsd, prompt=a.prompt, seed=a.seed, steps=a.steps, model=a.model,
                  precision=a.precision, block_windows=a.block_windows)
    out = {"size_px": a.size, "gsd": a.gsd, "steps": a.steps, "seed": a.seed, "precision": a.precision,
           "blend_radii": a.blend_radii or "default",
           "tile": lay.tile,
           "stride": lay.stride, "block": lay.block, "band": lay.band}

    fused_path = os.path.join(a.out, "fused.tif")
    if a.measure_only:
        with open(os.path.join(a.out, "seams.json")) as f:
            old = json.load(f)
        out.update({k: old[k] for k in ("fused_seconds", "fused_windows", "naive_seconds") if k in old})
    else:
        t = time.time()
        r = generate(GenerationRequest(extent=(x0, ytop - a.size * a.gsd, x0 + a.size * a.gsd, ytop),
                                       output=fused_path, large_area=True, **common))
        out["fused_seconds"] = time.time() - t
        out["fused_windows"] = r.stats.windows
        out["fused_band_correlation"] = r.stats.band_correlation  # neighbouring blocks' detail in their bands
        out["fused_band_correlation_bands"] = r.stats.band_correlation_bands  # per detail band, finest first
    with rasterio.open(fused_path) as ds:
        fused = ds.read()
        gt = ds.transform
        made = json.loads(ds.tags()["large_area"])  # the block layout the image was made with
    lay = BlockLayout(int(made["tile"]), int(made["overlap"]), int(made["block"]), int(made.get("band", 0)),
                      int(made.get("factor", 1)))
    f = lay.factor
    B, D, T, S = lay.px_block, lay.px_band, lay.tile * f, lay.stride * f  # in pixels
    out.update(tile=T, stride=S, block=B, band=D, factor=f)
    origin = (round(gt.c / gt.a), round(gt.f / gt.e))  # world (col, row) of the top-left pixel
    # window starts and ends inside each block; control half a stride on (inside windows)
    # lines compared within their phase in the latent grid (seams.seam_ratio): the decoder's own cell pattern
    # is no seam; `phase: false` in the JSON marks figures measured against all lines (before 2026-12-03)
    out["phase"] = True
    out["fused_window_grid"] = seam_report(fused, B, lay.window_edges, origin, shift=S // 2, factor=f).to_dict()
    out["fused_block_grid"] = seam_report(fused, B, (0, D), origin, shift=B // 2, factor=f).to_dict()
    out["fused_block_centre"] = seam_report(fused, B, (D // 2,), origin, shift=B // 2, factor=f).to_dict()
    # every line of the shared bands (where two blocks are cross-faded), against the same lines half a block on
    out["fused_block_bands"] = seam_report(fused, B, tuple(range(1, D)), origin, shift=B // 2, factor=f).to_dict()
    # the naive tiles start at the area's top-left corner: their grid is anchored to the image, not the world
    out["fused_on_naive_grid"] = seam_report(fused, T, (0,), (0, 0), factor=f).to_dict()

    if a.measure_only and os.path.exists(os.path.join(a.out, "naive.tif")):
        with rasterio.open(os.path.join(a.out, "naive.tif")) as ds:
            out["naive_tile_grid"] = seam_report(ds.read(), T, (0,), (0, 0), factor=f).to_dict()
    elif not a.skip_naive:
        t = time.time()
        naive = np.zeros_like(fused)
        tdir = os.path.join(a.out, "naive_tiles")
        os.makedirs(tdir, exist_ok=True)
        for i in range(0, a.size, T):
            for j in range(0, a.size, T):
                p = os.path.join(tdir, f"t_{i}_{j}.tif")
                ext = (x0 + j * a.gsd, ytop - (i + T) * a.gsd, x0 + (j + T) * a.gsd, ytop - i * a.gsd)
                generate(GenerationRequest(extent=ext, output=p, **common))
                with rasterio.open(p) as ds:
                    naive[:, i:i + T, j:j + T] = ds.read()
        out["naive_seconds"] = time.time() - t
        out["naive_tile_grid"] = seam_report(naive, T, (0,), (0, 0), factor=f).to_dict()
        with rasterio.open(fused_path) as src:
            prof = src.profile
        prof.update(driver="GTiff")
        with rasterio.open(os.path.join(a.out, "naive.tif"), "w", **prof) as dst:
            dst.write(naive)

    with open(os.path.join(a.out, "seams.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"area {a.size} x {a.size} px at {a.gsd} m, {a.steps} steps, seed {a.seed}, tile {T}, "
          f"window stride {S}, block {B}, band {D} (pixels; latent factor {f})")
    print(f"{'image / lines':40s} {'ratio':>7s} {'control':>8s} {'lines':>6s}")
    for k in ("fused_window_grid", "fused_block_grid", "fused_block_centre", "fused_block_bands",
              "fused_on_naive_grid",
              "naive_tile_grid"):
        if k in out:
            v = out[k]
            print(f"{k:40s} {v['ratio']:7.3f} {v['control']:8.3f} {v['lines']:6d}")
    print(f"fused {out['fused_seconds']:.0f} s ({out['fused_windows']} windows/step)"
          + (f", naive {out['naive_seconds']:.0f} s" if "naive_seconds" in out else ""))
    return 0


ROWS = ("fused_window_grid", "fused_block_grid", "fused_block_centre", "fused_block_bands", "fused_on_naive_grid",
        "naive_tile_grid")


def over_seeds(a) -> int:
    """main() once per seed (into OUT/seed<N>), then per row the mean ratio and control and their range."""
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    rest = ["--size", str(a.size), "--gsd", str(a.gsd), "--steps", str(a.steps), "--prompt", a.prompt,
            "--model", a.model, "--precision", a.precision] + (["--skip-naive"] if a.skip_naive else []) + \
        (["--measure-only"] if a.measure_only else []) + (["--blend-radii", a.blend_radii] if a.blend_radii else []) + \
        (["--block-windows", str(a.block_windows)] if a.block_windows else [])
    runs = []
    for s in seeds:
        d = os.path.join(a.out, f"seed{s}")
        main(rest + ["--seed", str(s), "--out", d])
        with open(os.path.join(d, "seams.json")) as f:
            runs.append(json.load(f))
    summary = {"seeds": seeds, "size_px": a.size, "gsd": a.gsd, "steps": a.steps, "precision": a.precision}
    print(f"\nover seeds {', '.join(map(str, seeds))}: mean ratio [min-max] / mean control [min-max]")
    for k in ROWS:
        r = [x[k]["ratio"] for x in runs if k in x]
        c = [x[k]["control"] for x in runs if k in x]
        if not r:
            continue
        summary[k] = {"ratio_mean": sum(r) / len(r), "ratio_min": min(r), "ratio_max": max(r),
                      "control_mean": sum(c) / len(c), "control_min": min(c), "control_max": max(c),
                      "lines_per_image": runs[0][k]["lines"]}
        v = summary[k]
        print(f"{k:40s} {v['ratio_mean']:7.3f} [{v['ratio_min']:.3f}-{v['ratio_max']:.3f}]  "
              f"{v['control_mean']:7.3f} [{v['control_min']:.3f}-{v['control_max']:.3f}]")
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
