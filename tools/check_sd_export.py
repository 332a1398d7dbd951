"""Check export-diffusers at Stable Diffusion scale without downloading anything: a random-weights pipeline with
SD 1.5's structure (UNet2DConditionModel 4 levels, cross-attention 768, VAE factor 8) is saved with
save_pretrained, converted with `python -m rsgen_qgis export-diffusers`, and compared with diffusers.

    --size mid   UNet widths (64, 128, 256, 256), 256 px: the whole pipeline, ONNX path vs
                 StableDiffusionPipeline (10 DPM-Solver++ steps, guidance 7.5, same latents)
    --size full  SD 1.5's own UNet (860 M parameters, 3.4 GB in fp32: the external-data path), one UNet call
                 ONNX vs torch (batch 2, 64 x 64 latent); needs ~11 GB of RAM and a few minutes on a CPU
    --fp16       also write and check the fp16 UNet (against the fp32 graph, fp16 precision)

    .venv/bin/python tools/check_sd_export.py --size mid --out /tmp/sdcheck
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
PROMPT = "a satellite image of farmland with roads"


def build(folder: str, full: bool):
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tiny_diffusers import hf_tokenizer, make_scheduler, write_clip_vocab

    write_clip_vocab(folder + "-vocab")
    tok = hf_tokenizer(folder + "-vocab")
    torch.manual_seed(0)
    if full:
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    else:
        unet = UNet2DConditionModel(sample_size=32, cross_attention_dim=768, attention_head_dim=8,
                                    block_out_channels=(64, 128, 256, 256), norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64, 128, 128), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
                        norm_num_groups=32)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=1024,
                                      num_hidden_layers=2, num_attention_heads=12, max_position_embeddings=77,
                                      bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1)).eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet.eval(),
                                   scheduler=make_scheduler("DPMSolverMultistepScheduler"), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    print(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters", flush=True)
    return pipe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["mid", "full"], default="mid")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--out", required=True, help="work folder (the pipeline and the package are written here)")
    a = ap.parse_args(argv)
    import numpy as np
    import onnxruntime as ort
    import torch

    from rsgen_qgis.core.engine import loop
    from rsgen_qgis.core.engine.prepare import Prepared
    from rsgen_qgis.core.runtime.models import load
    from rsgen_qgis.core.engine.samplers import Schedule, make_sampler

    full = a.size == "full"
    src, pkg = os.path.join(a.out, "sd"), os.path.join(a.out, "pkg", f"sd15-{a.size}")
    pipe = build(src, full)
    t = time.time()
    # the export runs as the user runs it (its own process), so its peak memory is measured alone
    cmd = [sys.executable, "-m", "rsgen_qgis", "export-diffusers", src, "--out", pkg] + (["--fp16"] if a.fp16 else [])
    if subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode != 0:
        return 1
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    print(f"export: {time.time() - t:.1f} s, peak RSS {peak:.1f} GB; files: " +
          ", ".join(f"{f} {os.path.getsize(os.path.join(pkg, f)) / 1e6:.1f} MB" for f in sorted(os.listdir(pkg))))
    cpu = ["CPUExecutionProvider"]
    if full:
        x = np.random.default_rng(0).standard_normal((2, 4, 64, 64)).astype(np.float32)
        ehs = np.random.default_rng(1).standard_normal((2, 77, 768)).astype(np.float32)
        ts = np.array([801.0, 801.0], np.float32)
        feeds = {"sample": x, "timestep": ts, "encoder_hidden_states": ehs}
        with torch.no_grad():
            ref = pipe.unet(torch.from_numpy(x), torch.from_numpy(ts), torch.from_numpy(ehs)).sample.numpy()
        del pipe  # 3.4 GB of torch weights
        gc.collect()
        m = load(pkg, providers=cpu)
        got = f32 = m.denoiser.run(feeds)["noise_pred"]
        print(f"UNet call, ONNX vs torch: max |diff| {np.abs(got - ref).max():.3g} (max |value| "
              f"{np.abs(ref).max():.3g})")
    else:
        m = load(pkg, providers=cpu)
        pipe.set_progress_bar_config(disable=True)
        x0 = np.random.default_rng(0).standard_normal((1, 4, 32, 32)).astype(np.float32)
        ref = pipe(PROMPT, num_inference_steps=10, guidance_scale=7.5, latents=torch.from_numpy(x0),
                   output_type="np", height=256, width=256).images[0]
        s = make_sampler("dpmpp_2m", Schedule.from_config(m.package.manifest["scheduler"]), 10)
        p = Prepared(None, 32, 32, m.autoencoder.factor, {}, [], text=m.text_encoder.embed(PROMPT),
                     text_uncond=m.text_encoder.embed(""))
        z = loop.run(m, p, s, Schedule.from_config(m.package.manifest["scheduler"]),
                     (x0[0] * np.float32(s.init_noise_sigma)).astype(np.float32), 7.5,
                     int(m.package.manifest["tile"]["size"]) // m.autoencoder.factor, 2, 4, lambda: False)
        ours = np.clip(m.autoencoder.decode(z) / 2 + 0.5, 0, 1).transpose(1, 2, 0)
        print(f"256 px image, ONNX path vs StableDiffusionPipeline: max |diff| {np.abs(ours - ref).max():.3g}, "
              f"mean |diff| {np.abs(ours - ref).mean():.3g} (image std {ref.std():.3g})")
        feeds = {"sample": x0, "timestep": np.array([801.0], np.float32),
                 "encoder_hidden_states": m.text_encoder.embed(PROMPT)}
        f32 = m.denoiser.run(feeds)["noise_pred"]
    if a.fp16:
        from rsgen_qgis.core.runtime import models

        del m
        models._cache.clear()  # the fp32 sessions
        gc.collect()
        f16 = ort.InferenceSession(os.path.join(pkg, "unet_fp16.onnx"), providers=cpu).run(None, feeds)[0]
        print(f"fp16 UNet vs fp32: max |diff| {np.abs(f16 - f32).max():.3g} (max |value| {np.abs(f32).max():.3g}), "
              f"finite: {bool(np.isfinite(f16).all())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
