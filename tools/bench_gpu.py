"""GPU speed figures, all measured in one run (docs/GPU.md says how to read them):

1. rsgen-base's denoiser (models/rsgen-base, the pixel model; the default model until rsgen-base-1), ONNX
   Runtime CUDA, fp32 and fp16 graphs, batch 1 and batched: windows/s (one window = one network evaluation of a
   64 px tile; classifier-free guidance needs two);
2. PyTorch CUDA on the same UNet (same architecture from the manifest, random weights: the speed does not
   depend on the weights), fp32 and fp16, same batches;
3. the share of the GPU's fp16 peak reached: the UNet's FLOPs (torch's FlopCounterMode) x windows/s, against
   a dense fp16 matmul measured in this run (and the vendor's dense fp16 figure for a few known GPUs);
4. an SD-class UNet step (UNet2DConditionModel with Stable Diffusion 1.5's configuration, random weights,
   fp16, batch 2 = one guided step of a 512 px tile): PyTorch CUDA, and ONNX Runtime CUDA on its fp16 export;
5. end to end: generate() of a 512 x 512 px request (64 overlapping windows, 20 steps) on CUDA.

Needs a CUDA GPU with onnxruntime-gpu (`make install GPU=1`) and torch with CUDA. Without CUDA it exits with a
message (exit code 2). `--smoke-cpu` runs every code path on the CPU with tiny sizes, to check the script
itself; its numbers are not GPU figures.

    .venv/bin/python tools/bench_gpu.py [--batch 16] [--iters 50] [--skip-sd-onnx] [--json runs/bench_gpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MODEL = os.path.join(ROOT, "models", "rsgen-base")
# Vendor dense fp16 tensor-core figures (TFLOPS, no sparsity), only for GPUs where the figure is unambiguous.
SPEC_FP16_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "A100": 312.0}


def timeit(fn, sync, iters: int, warmup: int = 5) -> float:
    """Median seconds per call, the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def check_cuda(smoke: bool):
    import onnxruntime as ort

    have = ort.get_available_providers()
    try:
        import torch
        torch_cuda = torch.cuda.is_available()
    except ImportError:
        torch_cuda = False
    if smoke:
        return "cpu", ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in have or not torch_cuda:
        why = []
        if "CUDAExecutionProvider" not in have:
            why.append(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {', '.join(have)}); "
                       "install onnxruntime-gpu with `make install GPU=1`")
        if not torch_cuda:
            why.append("torch sees no CUDA device")
        print("bench_gpu: no CUDA GPU here, nothing to measure: " + "; ".join(why) + ".", file=sys.stderr)
        raise SystemExit(2)
    return "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OrtBench:
    """An ORT session fed with device-resident inputs through IO binding (measures the graph, not copies)."""

    def __init__(self, path: str, providers, device: str):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(path, so, providers=providers)
        self.device = device
        self.provider = self.sess.get_providers()[0]

    def bind(self, feeds: dict):
        import onnxruntime as ort

        b = self.sess.io_binding()
        for k, v in feeds.items():
            b.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, self.device, 0))
        for o in self.sess.get_outputs():
            b.bind_output(o.name, self.device)
        return lambda: self.sess.run_with_iobinding(b)


def default_model(device, providers, batches, iters) -> dict:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rsgen_qgis.training.model import Denoiser, DenoiserConfig

    with open(os.path.join(MODEL, "manifest.json")) as f:
        man = json.load(f)
    cfg = DenoiserConfig.from_dict({k: v for k, v in man["architecture"].items() if k != "type"})
    g = man["graphs"]["denoiser"]
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    out = {"tile": cfg.tile, "ort": {}, "torch": {}}

    def feeds(b, dt=np.float32):
        r = np.random.default_rng(0)
        return {"sample": r.standard_normal((b, 3, cfg.tile, cfg.tile)).astype(dt),
                "timestep": np.full((b,), 500.0, dt),
                "spatial": r.standard_normal((b, cfg.spatial_channels, cfg.tile, cfg.tile)).astype(dt),
                "cond": r.standard_normal((b, cfg.cond_dim)).astype(dt)}

    for label, fname in (("fp32", g["file"]), ("fp16", g.get("fp16_file"))):
        if not fname:
            continue
        ob = OrtBench(os.path.join(MODEL, fname), providers, device)
        for b in batches:
            s = timeit(ob.bind(feeds(b)), sync, iters)
            out["ort"][f"{label}_b{b}"] = {"ms": s * 1e3, "windows_per_s": b / s, "provider": ob.provider}
    net = Denoiser(cfg).eval().to(device)
    with torch.inference_mode():
        fl = FlopCounterMode(display=False)
        with fl:
            net(*[torch.from_numpy(v).to(device) for v in feeds(1).values()])
        out["flops_per_window"] = fl.get_total_flops()
        for label, dt in (("fp32", torch.float32), ("fp16", torch.float16)):
            if device == "cpu" and dt == torch.float16:
                continue
            n = net.to(dt)
            for b in batches:
                args = [torch.from_numpy(v).to(device, dt) for v in feeds(b).values()]
                s = timeit(lambda: n(*args), sync, iters)
                out["torch"][f"{label}_b{b}"] = {"ms": s * 1e3, "windows_per_s": b / s}
    return out


def matmul_peak(device, smoke: bool) -> float:
    """Dense fp16 matmul TFLOPS measured here (the practical peak the UNet share is compared with)."""
    import torch

    n = 512 if smoke else 8192
    dt = torch.float32 if smoke else torch.float16
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    s = timeit(lambda: a @ b, sync, 5 if smoke else 50)
    return 2 * n ** 3 / s / 1e12


def sd_unet(device, providers, iters, smoke: bool, onnx: bool) -> dict:
    """One guided step of a 512 px tile on an SD 1.5-shaped UNet (random weights), fp16."""
    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if smoke:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=4, norm_num_groups=8)
        lat, ctx, dt = 8, 32, torch.float32
    else:
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)  # SD 1.5
        lat, ctx, dt = 64, 768, torch.float16
    unet = unet.eval().to(device, dt)
    params = sum(p.numel() for p in unet.parameters())
    x = torch.randn(2, 4, lat, lat, device=device, dtype=dt)
    t = torch.tensor([500.0, 500.0], device=device, dtype=dt)
    ehs = torch.randn(2, 77, ctx, device=device, dtype=dt)
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    out = {"params": params, "latent": lat, "dtype": str(dt)}
    with torch.inference_mode():
        out["torch_step_ms"] = timeit(lambda: unet(x, t, ehs), sync, iters) * 1e3
    if onnx:
        d = tempfile.mkdtemp(prefix="bench-sd-")
        path = os.path.join(d, "unet.onnx")
        with torch.no_grad():
            torch.onnx.export(unet, (x, t, ehs), path, input_names=["sample", "timestep", "encoder_hidden_states"],
                              output_names=["noise_pred"], opset_version=17, dynamo=False)
        ob = OrtBench(path, providers, device)
        npdt = np.float32 if smoke else np.float16
        f = ob.bind({"sample": x.float().cpu().numpy().astype(npdt), "timestep": t.float().cpu().numpy().astype(npdt),
                     "encoder_hidden_states": ehs.float().cpu().numpy().astype(npdt)})
        out["ort_step_ms"] = timeit(f, sync, iters) * 1e3
        out["ort_provider"] = ob.provider
    return out


def end_to_end(providers, smoke: bool) -> dict:
    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.request import GenerationRequest

    size = 128 if smoke else 512
    d = tempfile.mkdtemp(prefix="bench-gen-")
    req = GenerationRequest(extent=(453000, 6233600, 453000 + 4 * size, 6233600 + 4 * size), crs="EPSG:32734",
                            gsd=4.0, prompt="a satellite image of a forest", seed=1, steps=4 if smoke else 20,
                            guidance=3.0, sampler="dpmpp_2m", model=MODEL, output=os.path.join(d, "w.tif"))
    generate(req, providers=providers, window_batch=8)  # warm: sessions, engines
    r = generate(req.replace(seed=2), providers=providers, window_batch=8)
    from rsgen_qgis.core.engine.tiling import windows

    n = len(windows(size, size, 64, 16))
    return {"size_px": size, "windows": n, "steps": req.steps, "seconds": r.seconds, "provider": r.provider,
            "window_steps_per_s": n * req.steps / r.seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="batched window count (default 16)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--skip-sd-onnx", action="store_true", help="skip exporting the SD-class UNet to ONNX")
    ap.add_argument("--smoke-cpu", action="store_true", help="tiny sizes on the CPU: checks the script only")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(MODEL, "manifest.json")):
        print("bench_gpu: models/rsgen-base is missing: nothing to benchmark", file=sys.stderr)
        return 2
    device, providers = check_cuda(a.smoke_cpu)
    import onnxruntime as ort
    import torch

    iters = 3 if a.smoke_cpu else a.iters
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke run: not GPU figures)"
    print(f"device: {name}; torch {torch.__version__}; onnxruntime {ort.__version__} "
          f"({', '.join(ort.get_available_providers())})")
    res = {"device": name, "smoke": a.smoke_cpu}
    res["default_model"] = dm = default_model(device, providers, (1, 2 if a.smoke_cpu else a.batch), iters)
    print(f"\n1-2. default model denoiser ({dm['tile']} px windows), windows/s:")
    for eng in ("ort", "torch"):
        for k, v in dm[eng].items():
            extra = f" [{v['provider']}]" if "provider" in v else ""
            print(f"  {'ORT' if eng == 'ort' else 'PyTorch':7s} {k:9s} {v['windows_per_s']:10.1f} windows/s "
                  f"({v['ms']:.2f} ms/call){extra}")
    for k in dm["ort"]:
        if k in dm["torch"]:
            print(f"  ORT / PyTorch {k}: {dm['ort'][k]['windows_per_s'] / dm['torch'][k]['windows_per_s']:.2f}x")
    peak = matmul_peak(device, a.smoke_cpu)
    res["matmul_peak_tflops"] = peak
    spec = next((v for k, v in SPEC_FP16_TFLOPS.items() if k in name), None)
    fl = dm["flops_per_window"]
    best = max(dm["ort"].items(), key=lambda kv: kv[1]["windows_per_s"])
    achieved = fl * best[1]["windows_per_s"] / 1e12
    res["share"] = {"flops_per_window": fl, "best": best[0], "achieved_tflops": achieved,
                    "of_measured_matmul_peak": achieved / peak, "of_spec": achieved / spec if spec else None}
    print(f"\n3. UNet {fl / 1e9:.2f} GFLOP per window; best ORT ({best[0]}) reaches {achieved:.2f} TFLOPS = "
          f"{100 * achieved / peak:.1f}% of the dense {'fp16' if device == 'cuda' else 'fp32'} matmul measured "
          f"here ({peak:.1f} TFLOPS)" + (f", {100 * achieved / spec:.1f}% of the {spec:.0f} TFLOPS spec" if spec
                                        else ""))
    res["sd_unet"] = sd = sd_unet(device, providers, max(3, iters // 5), a.smoke_cpu, not a.skip_sd_onnx)
    print(f"\n4. SD-class UNet ({sd['params'] / 1e6:.0f} M parameters, {sd['dtype']}, batch 2, "
          f"{sd['latent']}x{sd['latent']} latent): PyTorch {sd['torch_step_ms']:.1f} ms/step"
          + (f", ORT {sd['ort_step_ms']:.1f} ms/step [{sd['ort_provider']}]" if "ort_step_ms" in sd else ""))
    res["end_to_end"] = e = end_to_end(providers, a.smoke_cpu)
    print(f"\n5. generate() {e['size_px']} x {e['size_px']} px, {e['windows']} windows x {e['steps']} steps, "
          f"guidance: {e['seconds']:.2f} s, {e['window_steps_per_s']:.1f} window-steps/s [{e['provider']}]")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
