"""`make bench`: speed figures measured in one run, printed as ratios (never asserted in tests).

- ONNX Runtime vs torch eager for the same denoiser (the bundled rsgen-base), CPU, batch 1 and 8;
- seconds per 64 px tile for 20 DPM-Solver++ steps with guidance (the dock's default), end to end through
  generate() (GeoTIFF included) and for the bare sampling loop.
Run with the venv's python from the repo root.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
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
    return out


def seconds_per_tile() -> dict:
    from rsgen_qgis.core.pipeline import generate
    from rsgen_qgis.core.request import GenerationRequest

    d = tempfile.mkdtemp()
    req = GenerationRequest(extent=(453000, 6233600, 453256, 6233856), crs="EPSG:32734", gsd=4.0,
                            prompt="a satellite image of a forest", seed=1, steps=20, guidance=3.0,
                            sampler="dpmpp_2m", model=MODEL, output=os.path.join(d, "t.tif"))
    generate(req)  # warm: session load, hash check
    ts = [generate(req.replace(seed=i)).seconds for i in range(5)]
    r4 = req.replace(extent=(453000, 6233600, 453512, 6233856))
    t2 = generate(r4).seconds
    return {"tile_64px_20_steps_cfg_s": statistics.median(ts), "request_128x64_s": t2}


def main() -> None:
    if not os.path.isfile(os.path.join(MODEL, "manifest.json")):
        sys.exit("models/rsgen-base is missing: nothing to benchmark")
    import onnxruntime as ort

    threads = os.cpu_count()
    print(f"machine: {os.cpu_count()} cores, onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    r = ort_vs_torch(threads)
    for b, v in r.items():
        print(f"denoiser {b}: ORT {v['ort_ms']:.1f} ms, torch eager {v['torch_eager_ms']:.1f} ms -> "
              f"ORT is {v['speedup']:.2f}x faster (target >= 1.5x)")
    s = seconds_per_tile()
    print(f"64 px tile, 20 DPM-Solver++ steps, guidance 3 (2 UNet calls/step), via generate(): "
          f"{s['tile_64px_20_steps_cfg_s']:.3f} s (target <= 0.5 s on 2 cores)")
    print(f"128 x 64 px request (3 overlapping windows): {s['request_128x64_s']:.3f} s")
    os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)
    with open(os.path.join(ROOT, "runs", "bench.json"), "w") as f:
        json.dump({"ort_vs_torch": r, **s, "cores": threads}, f, indent=1)


if __name__ == "__main__":
    main()
