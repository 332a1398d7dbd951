"""`make bench` (second part): latent models through the one engine, measured in one run on this machine.

The model: --model DIR (a latent package); by default the committed models/rsgen-base-1 (the latent model in
training, issue "rsgen-base 1.0"), or, with --model planned or where that package is missing, a package built
here with random weights in the architecture once planned for 1.0 (UNet channels 64/128/192, guidance-distilled:
one evaluation per step) on the committed models/taef2. Speed does not depend on the weights.

Figures (runs/bench_latent.json):
- seconds per 256 px tile through generate() (GeoTIFF included), with the TAEF2 decode alone beside, at --steps
  (default: the package's default steps) and, where those are not 20, at 20 steps too (issue "One engine"'s figure);
- large areas in fresh processes: 1 km2 at 2 m and at 1 m (seconds, Mpx/s per core) and peak RSS at 1, 4 and
  16 km2 at 2 m (getrusage of that process: model, ONNX Runtime, GDAL included); each area twice in its process:
  the first request (verifying the package files and opening the sessions included) and a second one with
  another seed (the model loaded, as for every later request in a QGIS session: the figure Mpx/s is from);
- all at --precision (default auto: the package's int8 denoiser and the autoencoder's int8 decoder on the CPU where
  they have them, as the plugin runs by default); then the tile and 1 km2 at 2 m once more with the exact fp32
  graphs, so the two are compared within one run (--windowed-too: and 1 km2 at 2 m with every block decoded in
  overlapping windows, the decode before whole-block decoding).
- a package with a weak model (autoguidance, core.engine.autoguide): the tile and 1 km2 at 2 m once more with
  autoguidance off, in the same run;
- 1 km2 at 2 m also moved over the world-anchored block grid (--alignments N: N x N origins over one block pitch,
  default 3): the mean and the worst over the origins, since one origin can be a lucky or an unlucky one;
    tools/bench_latent.py [--sizes 1,4,16] [--steps N] [--model DIR] [--precision auto|fp32] [--alignments 3]
"""
from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TAEF2 = os.path.join(ROOT, "models", "taef2")
BENCH_PKG = os.path.join(ROOT, "runs", "bench_latent_models")
TRAINED = os.path.join(ROOT, "models", "rsgen-base-1")
PLANNED = dict(block_out_channels=(64, 128, 192), attention_levels=(False, False, True), layers_per_block=1,
               norm_num_groups=16, attention_head_dim=32, tile=32, guidance_input=True)


def build_bench_package(out_root: str) -> str:
    """A random-weights latent package in the planned architecture, beside a copy of models/taef2."""
    import shutil

    import torch

    from rsgen_qgis.core.conditions.encoding import CondLayout, GUIDANCE_RANGE, spatial_channels
    from rsgen_qgis.training.export import autoencoder_entry, write_package
    from rsgen_qgis.training.model import Denoiser, DenoiserConfig
    from rsgen_qgis.training.train import SCHEDULE

    pkg = os.path.join(out_root, "rsgen-latent-bench")
    if os.path.isfile(os.path.join(pkg, "manifest.json")):
        return pkg
    os.makedirs(out_root, exist_ok=True)
    if not os.path.isdir(os.path.join(out_root, "taef2")):
        shutil.copytree(TAEF2, os.path.join(out_root, "taef2"))
    ae = autoencoder_entry(os.path.join(out_root, "taef2"))
    torch.manual_seed(0)
    lay = CondLayout(32, GUIDANCE_RANGE)  # the tiny text encoder (32 dims): its cost is one call per request
    cfg = DenoiserConfig(image_channels=ae["channels"], spatial_channels=spatial_channels(image_channels=ae["channels"]),
                         cond_dim=lay.dim, **PLANNED)
    write_package(pkg, Denoiser(cfg), dict(SCHEDULE), model_id="rsgen-latent-bench",
                  name="latent bench (random weights, planned 1.0 architecture)", text_kind="tiny", fp16=False,
                  autoencoder=ae, info={"training": {"gsd_range_m": [0.5, 20.0]}})
    return pkg


def _request(model: str, side_m: float, gsd: float, out: str, **kw):
    from rsgen_qgis.core.request import GenerationRequest

    x0, y0 = 453000.0, 6233000.0
    return GenerationRequest(extent=(x0, y0, x0 + side_m, y0 + side_m), crs="EPSG:32734", gsd=gsd, model=model,
                             prompt="dense residential area with trees", seed=1, guidance=3.0, output=out, **kw)


def tile_seconds(model: str, steps: int, precision: str = "auto", autoguidance=None) -> dict:
    import numpy as np

    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.runtime.models import load

    d = tempfile.mkdtemp()
    req = _request(model, 512.0, 2.0, os.path.join(d, "t.tif"), steps=steps, precision=precision,  # 256 x 256 px
                   autoguidance=autoguidance)
    generate(req, providers=["CPUExecutionProvider"])  # warm: sessions, hashes
    ts = [generate(req.replace(seed=i), providers=["CPUExecutionProvider"]).seconds for i in range(3)]
    m = load(model, providers=["CPUExecutionProvider"], precision=precision)
    z = np.zeros((m.autoencoder.channels, 32, 32), np.float32)
    m.autoencoder.decode(z)
    t0 = time.perf_counter()
    for _ in range(3):
        m.autoencoder.decode(z)
    dec = (time.perf_counter() - t0) / 3
    return {"tile_256px_s": statistics.median(ts), "steps": steps, "decode_256px_s": dec, "precision": precision,
            "autoguidance": "package default" if autoguidance is None else autoguidance, "denoiser_graph": m.variant,
            "decoder_graph": getattr(m.autoencoder, "variant", "fp32")}


def large_child(model: str, km2: float, gsd: float, steps: int, out_json: str, windowed: bool = False,
                precision: str = "auto", aligned: int = 0, autoguidance=None) -> None:
    from rsgen_qgis.core.engine.generate import generate

    if windowed:  # the decode before whole-block decoding: every block in overlapping windows of latent_tile
        from rsgen_qgis.core.runtime import autoencoder

        autoencoder.WHOLE_MAX_CELLS = 0

    d = tempfile.mkdtemp()
    side = round(math.sqrt(km2 * 1e6) / gsd) * gsd
    req = _request(model, side, gsd, os.path.join(d, "large.tif"), steps=steps, large_area=True, precision=precision,
                   autoguidance=autoguidance)
    t = time.perf_counter()
    r = generate(req, providers=["CPUExecutionProvider"])
    cold = time.perf_counter() - t
    os.remove(r.path)
    # again in the same process, another seed: the model is loaded (files verified, sessions open), as for every
    # request after the first in a QGIS session
    t = time.perf_counter()
    r = generate(req.replace(seed=req.seed + 1), providers=["CPUExecutionProvider"])
    secs = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    px = r.grid.width * r.grid.height
    os.remove(r.path)  # before the moved requests, which write to the same path
    aligned_runs = alignments_sample(req, aligned) if aligned else None
    with open(out_json, "w") as f:
        json.dump({"km2": km2, "gsd": gsd, "windowed_block_decode": windowed, "precision": precision,
                   "autoguidance": "package default" if autoguidance is None else autoguidance,
                   "denoiser_graph": r.denoiser_graph, "px": [r.grid.width, r.grid.height],
                   "steps": steps, "seconds": secs, "seconds_first_in_process": cold,
                   "mpx_per_s_per_core_first_in_process": px / 1e6 / cold / (os.cpu_count() or 1),
                   "peak_rss_mb": rss, "blocks": r.stats.blocks, "window_evals": r.stats.window_evals,
                   "mpx_per_s_per_core": px / 1e6 / secs / (os.cpu_count() or 1),
                   "alignments": aligned_runs}, f)


def alignments_sample(req, n: int) -> dict:
    """The same area moved over the world-anchored block grid: n x n origins spread evenly over one block pitch
    (model loaded, one seed). A request costs the blocks its footprint touches, so one origin can flatter or
    penalise an area; the mean over origins is what a user panning anywhere gets."""
    from rsgen_qgis.core.engine.blocks import BlockLayout
    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.runtime.models import load

    lay = BlockLayout.for_model(load(req.model, providers=["CPUExecutionProvider"], precision=req.precision),
                                req.block_windows)
    pitch_m = lay.px_block * req.gsd
    runs = []
    for i in range(n):
        for j in range(n):
            dx, dy = pitch_m * j / n, pitch_m * i / n
            x0, y0, x1, y1 = req.extent
            moved = req.replace(extent=(x0 + dx, y0 + dy, x1 + dx, y1 + dy), seed=req.seed + 2)
            t = time.perf_counter()
            r = generate(moved, providers=["CPUExecutionProvider"])
            secs = time.perf_counter() - t
            px = r.grid.width * r.grid.height
            runs.append({"offset_m": [dx, dy], "seconds": secs, "blocks": r.stats.blocks,
                         "window_evals": r.stats.window_evals,
                         "mpx_per_s_per_core": px / 1e6 / secs / (os.cpu_count() or 1)})
            os.remove(r.path)
    secs = [r["seconds"] for r in runs]
    rate = [r["mpx_per_s_per_core"] for r in runs]
    return {"origins": len(runs), "pitch_m": pitch_m, "seconds_mean": statistics.mean(secs),
            "seconds_max": max(secs), "mpx_per_s_per_core_mean": statistics.mean(rate),
            "mpx_per_s_per_core_min": min(rate), "blocks_mean": statistics.mean(r["blocks"] for r in runs),
            "runs": runs}


def _child(model: str, km2: float, gsd: float, steps: int, windowed: bool = False, precision: str = "auto",
           aligned: int = 0, autoguidance=None) -> dict:
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--child", out, "--model", model, "--km2", str(km2),
                    "--gsd", str(gsd), "--steps", str(steps), "--precision", precision, "--aligned", str(aligned)]
                   + (["--windowed"] if windowed else [])
                   + (["--autoguidance", str(autoguidance)] if autoguidance is not None else []), check=True)
    with open(out) as f:
        res = json.load(f)
    os.remove(out)
    return res


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a latent model package folder (default: models/rsgen-base-1; 'planned': the "
                    "planned architecture with random weights)")
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps (0: the package's default)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--km2", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--gsd", type=float, default=2.0, help=argparse.SUPPRESS)
    ap.add_argument("--windowed", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32"))
    ap.add_argument("--aligned", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--autoguidance", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--alignments", type=int, default=3, help="1 km2 at 2 m also moved over the block grid: N x N "
                    "origins spread over one block pitch (0: not measured)")
    ap.add_argument("--windowed-too", action="store_true", help="also 1 km2 at 2 m with blocks decoded in windows")
    a = ap.parse_args()
    if a.child:
        large_child(a.model, a.km2, a.gsd, a.steps, a.child, a.windowed, a.precision, a.aligned, a.autoguidance)
        return
    if not os.path.isfile(os.path.join(TAEF2, "manifest.json")):
        sys.exit("models/taef2 is missing: nothing to benchmark")
    planned = a.model == "planned" or (not a.model and not os.path.isfile(os.path.join(TRAINED, "manifest.json")))
    model = build_bench_package(BENCH_PKG) if planned else (a.model or TRAINED)
    cores = os.cpu_count() or 1
    with open(os.path.join(model, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    version = manifest.get("version", "")
    out = {"model": os.path.basename(model), "version": version, "cores": cores, "planned_architecture":
           {k: list(v) if isinstance(v, tuple) else v for k, v in PLANNED.items()} if planned else None}
    a.steps = a.steps or int(manifest.get("defaults", {}).get("steps") or 20)
    out["steps"] = a.steps
    distilled = bool(manifest["conditions"].get("guidance_input"))
    weak = "weak_denoiser" in manifest.get("graphs", {})  # autoguidance: one more evaluation, measured off too
    out["evaluations_per_step"] = (1 if distilled else 2) + (1 if weak else 0)  # guidance 3: distilled, or two
    exact = "fp32" if a.precision != "fp32" else None
    tiles = [tile_seconds(model, a.steps, a.precision)] + ([tile_seconds(model, a.steps, exact)] if exact else [])
    out["tile"], out["tile_exact"] = tiles[0], (tiles[1] if exact else None)
    out["tile_autoguidance_off"] = tile_seconds(model, a.steps, a.precision, 1.0) if weak else None
    if weak:
        tiles.append(out["tile_autoguidance_off"])
    out["tile_20_steps"] = None
    if a.steps != 20:  # the figure: a 256 px tile at 20 steps, decode included
        out["tile_20_steps"] = tile_seconds(model, 20, a.precision)
        tiles.append(out["tile_20_steps"])
    for t in tiles:
        ag = " (autoguidance off)" if t["autoguidance"] == 1.0 else ""
        print(f"latent model {out['model']} {version}{ag}: 256 px tile, {t['steps']} steps "
              f"({out['evaluations_per_step']} evaluation(s) each{', one fewer here' if ag else ''}, guidance 3), "
              f"precision {t['precision']} (denoiser {t['denoiser_graph']}, decoder {t['decoder_graph']}), via generate(): {t['tile_256px_s']:.2f} s; decode of one 256 px tile "
              f"{t['decode_256px_s']:.3f} s", flush=True)
    runs = []
    # then 1 km2 at 2 m again with the exact graphs (and, asked for, with every block decoded in overlapping
    # windows), so that they are compared within one run
    plan = [(float(s), 2.0, False, a.precision, None) for s in a.sizes.split(",")] + \
        [(1.0, 1.0, False, a.precision, None)]
    plan += ([(1.0, 2.0, False, exact, None)] if exact else []) + \
        ([(1.0, 2.0, True, a.precision, None)] if a.windowed_too else []) + \
        ([(1.0, 2.0, False, a.precision, 1.0)] if weak else [])
    for n, (km2, gsd, win, prec, ag) in enumerate(plan):
        r = _child(model, km2, gsd, a.steps, win, prec, a.alignments if n == 0 and km2 == 1.0 else 0, ag)
        runs.append(r)
        print(f"large area {km2:g} km2 at {gsd:g} m, precision {prec}{' (blocks decoded in windows)' if win else ''}"
              f"{' (autoguidance off)' if ag == 1.0 else ''} "
              f"({r['px'][0]} x {r['px'][1]} px): {r['seconds']:.1f} s with the model loaded "
              f"({r['seconds_first_in_process']:.1f} s as the first request of a process), "
              f"{r['mpx_per_s_per_core']:.4f} Mpx/s per core, peak RSS {r['peak_rss_mb']:.0f} MB, {r['blocks']} blocks, "
              f"{r['window_evals']} window evaluations", flush=True)
        if r.get("alignments"):
            al = r["alignments"]
            print(f"  moved over the block grid ({al['origins']} origins over the {al['pitch_m']:g} m pitch): "
                  f"{al['seconds_mean']:.1f} s mean, {al['seconds_max']:.1f} s at worst, "
                  f"{al['mpx_per_s_per_core_mean']:.4f} Mpx/s per core mean ({al['mpx_per_s_per_core_min']:.4f} at "
                  f"worst), {al['blocks_mean']:.2f} blocks on average", flush=True)
    out["large"] = runs
    os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)
    with open(os.path.join(ROOT, "runs", "bench_latent.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
