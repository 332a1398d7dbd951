"""`make bench`: speed figures measured in one run, printed as ratios (never asserted in tests).

- ONNX Runtime vs torch eager for the same denoiser (the bundled rsgen-base), CPU, batch 1 and 8, and the
  package's int8 CPU graph vs its fp32 graph;
- seconds per 64 px tile for 20 DPM-Solver++ steps with guidance (the dock's default), end to end through
  generate() (GeoTIFF included), with the graph the CPU runs by default (int8) and with the exact fp32 graph, and
  the default SDE sampler against the deterministic 2M;
- large areas (core.engine.blocks): for each size (km2 at --gsd m/px), one fresh subprocess runs generate() with
  large_area=True and reports its wall seconds and peak RSS (getrusage of that process: model, ONNX Runtime and
  GDAL included), windows per second; 1 km2 again with the fp32 graph (--precision auto only) and with the
  deterministic DPM-Solver++ 2M instead of the default SDE sampler; and batched (8 windows per ONNX call) vs
  unbatched windows on one block.
Run with the venv's python from the repo root:
    tools/bench.py                                  # everything, 1/4/16 km2 at 2 m, 20 steps
    tools/bench.py --only-large --sizes 1,4 --steps 2   # what a 2-core laptop does in minutes
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from rsgen_qgis.core.request import DEFAULT_SAMPLER  # noqa: E402
MODEL = os.path.join(ROOT, "models", "rsgen-base")


def timeit(fn, repeat: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def ort_vs_torch(threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from rsgen_qgis.training.export import denoiser_io  # noqa: F401  (same contract)
    from rsgen_qgis.training.model import Denoiser, DenoiserConfig

    man = json.load(open(os.path.join(MODEL, "manifest.json")))
    arch = {k: v for k, v in man["architecture"].items() if k != "type"}
    cfg = DenoiserConfig.from_dict(arch)
    torch.set_num_threads(threads)
    net = Denoiser(cfg).eval()  # weights do not change the speed; the graph is the same
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(os.path.join(MODEL, man["graphs"]["denoiser"]["file"]), so,
                                providers=["CPUExecutionProvider"])
    int8 = man["graphs"]["denoiser"].get("int8_file")
    sess8 = int8 and ort.InferenceSession(os.path.join(MODEL, int8), so, providers=["CPUExecutionProvider"])
    out = {}
    for b in (1, 8):
        x = np.random.randn(b, 3, cfg.tile, cfg.tile).astype(np.float32)
        s = np.random.randn(b, cfg.spatial_channels, cfg.tile, cfg.tile).astype(np.float32)
        c = np.random.randn(b, cfg.cond_dim).astype(np.float32)
        t = np.full((b,), 500.0, np.float32)
        feed = {"sample": x, "timestep": t, "spatial": s, "cond": c}
        tt = [torch.from_numpy(v) for v in (x, t, s, c)]
        t_ort = timeit(lambda: sess.run(None, feed))
        with torch.no_grad():
            t_torch = timeit(lambda: net(*tt))
        out[f"batch{b}"] = {"ort_ms": t_ort * 1e3, "torch_eager_ms": t_torch * 1e3, "speedup": t_torch / t_ort}
        if sess8:
            t8 = timeit(lambda: sess8.run(None, feed))
            out[f"batch{b}"].update(ort_int8_ms=t8 * 1e3, int8_speedup=t_ort / t8)
    return out


def seconds_per_tile(precision: str = "auto", sampler: str = DEFAULT_SAMPLER, class_guidance=None) -> dict:
    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.request import GenerationRequest

    d = tempfile.mkdtemp()
    req = GenerationRequest(extent=(453000, 6233600, 453256, 6233856), crs="EPSG:32734", gsd=4.0,
                            prompt="a satellite image of a forest", seed=1, steps=20, guidance=3.0,
                            sampler=sampler, model=MODEL, output=os.path.join(d, "t.tif"), precision=precision,
                            class_guidance=class_guidance)
    graph = generate(req).denoiser_graph  # warm: session load, hash check
    ts = [generate(req.replace(seed=i)).seconds for i in range(5)]
    r4 = req.replace(extent=(453000, 6233600, 453512, 6233856))
    t2 = generate(r4).seconds
    from rsgen_qgis.core.engine.blocks import evaluations_per_window

    calls = evaluations_per_window(req, json.load(open(os.path.join(MODEL, "manifest.json"))))
    return {"tile_64px_20_steps_cfg_s": statistics.median(ts), "request_128x64_s": t2, "unet_calls_per_step": calls,
            "sampler": sampler,
            "denoiser_graph": graph}


def seamless_cost(side: int = 1024) -> float:
    """Seconds of the inpainting's seamless step (core.conditions.seamless) for a side x side hole in a slightly larger image."""
    import numpy as np

    from rsgen_qgis.core.conditions.seamless import seamless_fill

    n = side + 64
    rng = np.random.default_rng(0)
    known = rng.uniform(-1, 1, (3, n, n)).astype(np.float32)
    fill = rng.uniform(-1, 1, (3, n, n)).astype(np.float32)
    mask = np.zeros((n, n), np.float32)
    mask[32:-32, 32:-32] = 1
    return timeit(lambda: seamless_fill(fill, known, mask), repeat=3, warmup=1)


def large_child(km2: float, gsd: float, steps: int, window_batch: int, out_json: str, precision: str,
                sampler: str) -> None:
    """One large-area generation in this (fresh) process; writes seconds and this process's peak RSS."""
    import resource

    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.request import GenerationRequest

    side = round(math.sqrt(km2 * 1e6) / gsd) * gsd
    x0, y0 = 453000.0, 6233000.0
    d = tempfile.mkdtemp()
    req = GenerationRequest(extent=(x0, y0, x0 + side, y0 + side), crs="EPSG:32734", gsd=gsd, large_area=True,
                            prompt="a satellite image of medium density residential area with trees", seed=1,
                            steps=steps, guidance=3.0, model=MODEL, output=os.path.join(d, "large.tif"),
                            precision=precision, sampler=sampler)
    t = time.perf_counter()
    r = generate(req, window_batch=window_batch, providers=["CPUExecutionProvider"])
    secs = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    st = r.stats
    with open(out_json, "w") as f:
        json.dump({"km2": km2, "gsd": gsd, "px": [r.grid.width, r.grid.height], "steps": steps,
                   "window_batch": window_batch, "denoiser_graph": r.denoiser_graph, "seconds": secs, "peak_rss_mb": rss_mb, "blocks": st.blocks,
                   "windows_per_step": st.windows, "window_evals": st.window_evals,
                   "windows_per_s": st.window_evals / secs, "file_mb": os.path.getsize(r.path) / 1e6}, f)
    os.remove(r.path)


def _child(args: list) -> dict:
    import subprocess

    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--child", out] + args, check=True)
    with open(out) as f:
        res = json.load(f)
    os.remove(out)
    return res


def large_areas(sizes, gsd: float, steps: int, ratio: bool = True, precision: str = "auto") -> dict:
    out = {"sizes": []}

    def one(km2, prec, sampler=DEFAULT_SAMPLER):
        r = _child(["--km2", str(km2), "--gsd", str(gsd), "--steps", str(steps), "--window-batch", "8",
                    "--precision", prec, "--sampler", sampler])
        print(f"large area {km2:g} km2 at {gsd:g} m ({r['px'][0]} x {r['px'][1]} px), {steps} {sampler} steps, "
              f"{r['denoiser_graph']} graph: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"{r['blocks']} blocks, {r['windows_per_step']} windows/step, {r['windows_per_s']:.2f} windows/s",
              flush=True)
        return r

    for km2 in sizes:
        out["sizes"].append(one(km2, precision))
    first = out["sizes"][0]
    if ratio and precision == "auto" and first["denoiser_graph"] != "fp32":
        exact = one(sizes[0], "fp32")
        out["exact_first_size"] = exact
        print(f"{first['denoiser_graph']} vs fp32 graph at {sizes[0]:g} km2: {exact['seconds'] / first['seconds']:.2f}x "
              "faster", flush=True)
    if not ratio:
        return out
    ode = one(sizes[0], precision, "dpmpp_2m")
    out["dpmpp_2m_first_size"] = ode
    print(f"{DEFAULT_SAMPLER} vs dpmpp_2m at {sizes[0]:g} km2: {first['seconds'] / ode['seconds']:.3f}x the time",
          flush=True)
    # batched vs unbatched: the same 256 x 256 px area, 1 step
    one_block = (256 * gsd) ** 2 / 1e6
    b8 = _child(["--km2", str(one_block), "--gsd", str(gsd), "--steps", "1", "--window-batch", "8"])
    b1 = _child(["--km2", str(one_block), "--gsd", str(gsd), "--steps", "1", "--window-batch", "1"])
    out["batched_vs_unbatched"] = {"batched_windows_per_s": b8["windows_per_s"],
                                   "unbatched_windows_per_s": b1["windows_per_s"],
                                   "ratio": b8["windows_per_s"] / b1["windows_per_s"], "area_px": b8["px"]}
    print(f"windows per second, 8 per ONNX call vs 1: {b8['windows_per_s']:.2f} vs {b1['windows_per_s']:.2f} "
          f"-> batched/unbatched = {out['batched_vs_unbatched']['ratio']:.2f}", flush=True)
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="speed figures (see the module docstring)")
    ap.add_argument("--only-large", action="store_true", help="only the large-area figures")
    ap.add_argument("--no-large", action="store_true", help="skip the large-area figures")
    ap.add_argument("--sizes", default="1,4,16", help="large-area sizes in km2 (default 1,4,16)")
    ap.add_argument("--gsd", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-ratio", action="store_true", help="skip the batched vs unbatched measurement")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--km2", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--window-batch", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--sampler", default=DEFAULT_SAMPLER, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32"],
                    help="denoiser graph for the large areas (auto: int8 on the CPU where the package has one)")
    a = ap.parse_args()
    if a.child:
        large_child(a.km2, a.gsd, a.steps, a.window_batch, a.child, a.precision, a.sampler)
        return
    if not os.path.isfile(os.path.join(MODEL, "manifest.json")):
        sys.exit("models/rsgen-base is missing: nothing to benchmark")
    import onnxruntime as ort

    threads = os.cpu_count()
    print(f"machine: {os.cpu_count()} cores, onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)
    large = None
    if not a.no_large:
        large = large_areas([float(v) for v in a.sizes.split(",")], a.gsd, a.steps, not a.no_ratio, a.precision)
        with open(os.path.join(ROOT, "runs", f"bench_large_{a.steps}steps.json"), "w") as f:
            json.dump({**large, "cores": threads}, f, indent=1)
    if a.only_large:
        return
    r = ort_vs_torch(threads)
    for b, v in r.items():
        print(f"denoiser {b}: ORT {v['ort_ms']:.1f} ms, torch eager {v['torch_eager_ms']:.1f} ms -> "
              f"ORT is {v['speedup']:.2f}x faster (target >= 1.5x)")
        if "ort_int8_ms" in v:
            print(f"denoiser {b}: ORT int8 graph {v['ort_int8_ms']:.1f} ms -> {v['int8_speedup']:.2f}x the fp32 graph")
    tiles = {}
    from rsgen_qgis.core.engine.samplers import SAMPLER_LABELS
    for prec, sampler in (("auto", "dpmpp_2m_sde"), ("auto", "dpmpp_2m"), ("fp32", "dpmpp_2m_sde")):
        s = seconds_per_tile(prec, sampler)
        tiles[f"{s['denoiser_graph']}_{sampler}"] = s
        print(f"64 px tile, 20 {SAMPLER_LABELS[sampler]} steps, guidance 3 "
              f"({s['unet_calls_per_step']} UNet call(s)/step), {s['denoiser_graph']} graph, via generate(): "
              f"{s['tile_64px_20_steps_cfg_s']:.3f} s (target <= 0.5 s on 2 cores)")
        print(f"128 x 64 px request (3 overlapping windows), {s['denoiser_graph']} graph: {s['request_128x64_s']:.3f} s")
    with open(os.path.join(MODEL, "manifest.json")) as f:
        cg_default = json.load(f).get("defaults", {}).get("class_guidance")
    if cg_default:  # the default above includes class guidance; the same without it, in this run
        off = seconds_per_tile("auto", DEFAULT_SAMPLER, class_guidance=0.0)["tile_64px_20_steps_cfg_s"]
        on = tiles.get(f"int8_{DEFAULT_SAMPLER}", {}).get("tile_64px_20_steps_cfg_s")
        if on:
            print(f"class guidance {cg_default:g} (the default) vs off, per tile: {on:.3f} s vs {off:.3f} s = "
                  f"{on / off:.3f}x")
    sde, ode = tiles.get("int8_dpmpp_2m_sde"), tiles.get("int8_dpmpp_2m")
    if sde and ode:
        print(f"SDE vs ODE sampler, per tile: {sde['tile_64px_20_steps_cfg_s'] / ode['tile_64px_20_steps_cfg_s']:.3f}x "
              "(the SDE's world-anchored step noise)")
    seam_s = seamless_cost(1024)
    if sde:  # the same hole's sampling: windows of the tile at 3/4 stride, each a tile's time
        from rsgen_qgis.core.engine.tiling import windows

        m = json.load(open(os.path.join(MODEL, "manifest.json")))
        tile = int(m["tile"]["size"])
        n_win = len(windows(1088, 1088, tile, tile // 4))
        gen_s = n_win * sde["tile_64px_20_steps_cfg_s"]
        print(f"seamless inpainting step, 1024 x 1024 px hole: {seam_s:.2f} s = {100 * seam_s / gen_s:.1f} % of "
              f"sampling that area (~{n_win} windows x {sde['tile_64px_20_steps_cfg_s']:.3f} s)")
    os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)
    with open(os.path.join(ROOT, "runs", "bench.json"), "w") as f:
        json.dump({"ort_vs_torch": r, "tiles": tiles, "seamless_1024_s": seam_s, "cores": threads}, f, indent=1)


if __name__ == "__main__":
    main()
