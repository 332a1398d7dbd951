"""Train the rsgen denoiser on prepared real data (CPU recipe by default; a GPU is used when present).

    python -m rsgen_qgis.training.train --data DATA --out runs/train --minutes 70

v-prediction on a cosine schedule with min-SNR-5 loss weighting (faster convergence for small budgets),
AdamW, EMA weights, a resolution curriculum (32 px first: 4x cheaper per sample, the UNet is fully
convolutional, then 64 px, the native tile). Checkpoints are plain state dicts + JSON-able config, written
atomically every few minutes so an export can run while training continues.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .data import BatchMaker, Probabilities, load_aid, load_maps
from .model import Denoiser, DenoiserConfig, extra_per_level, grow_state
from .captions import all_captions

SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
            "timestep_spacing": "trailing", "steps_offset": 0}


def alphas_cumprod(config: dict = SCHEDULE) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config["num_train_timesteps"],
                         beta_schedule=config["beta_schedule"]).alphas_cumprod.float()


def caption_embeddings(cache: str) -> dict:
    path = os.path.join(cache, "caption_emb.npz")
    caps = all_captions()
    if os.path.exists(path):
        z = np.load(path)
        if list(z["captions"]) == caps:
            return dict(zip(caps, z["emb"]))
    from .text_encoder import embed_texts_torch

    emb = np.asarray(embed_texts_torch(caps), np.float32)
    os.makedirs(cache, exist_ok=True)
    np.savez(path, captions=np.array(caps), emb=emb)
    return dict(zip(caps, emb))


def min_snr_weight(ac: torch.Tensor) -> torch.Tensor:
    """Per-timestep loss weight, min-SNR-5 for v-prediction."""
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=5.0) / (snr + 1)


def snr_plus_one_weight(ac: torch.Tensor) -> torch.Tensor:
    """Per-timestep weight on the v loss that puts min(SNR, 5) + 1 on the x0 error (the v loss itself puts SNR + 1
    there, EDM's weighting for unit-variance data; truncated at 5 like min-SNR). min-SNR-5 puts min(SNR, 5) there,
    which vanishes at high noise, where the layout and the composition of a tile are decided: a latent model on
    TAEF2's 32 channels learned almost nothing from its layout under it (x0 error at t = 999 only 1.6 % lower
    with the layout than without, MODEL_CARD.md)."""
    snr = ac / (1 - ac)
    return (torch.clamp(snr, max=5.0) + 1) / (snr + 1)


LOSS_WEIGHTS = {"min-snr": min_snr_weight, "snr-plus-one": snr_plus_one_weight}


def cosine_lr(lr: float, lr_min: float, frac: float) -> float:
    """Decay from lr to lr_min over frac in [0, 1] of the budget."""
    return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def cpu_has_bf16() -> bool:
    """Whether this CPU's oneDNN runs bfloat16 convolutions natively (AVX512-BF16 or AMX). Without it, autocast's
    bfloat16 convolutions fall back to ATen's reference kernels (aten::_slow_conv2d_forward): a forward of the
    96,96,144 latent UNet at batch 16 took 38-47 s on a 2-core AMD EPYC against about 1 s in float32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, native_bf16: bool) -> str:
    """--precision auto: bf16 where the device computes it natively (native_bf16: a CUDA device with bfloat16, a CPU
    with AVX512-BF16 or AMX), else fp32; fp32 and bf16 as asked."""
    if requested != "auto":
        return requested
    return "bf16" if native_bf16 else "fp32"


def optimizer_step(model, ema, opt, loss: torch.Tensor, lr: float, ema_max: float, step: int) -> None:
    """One AdamW step at lr (gradients clipped to norm 1), then the EMA weights follow with warm-up decay."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    decay = min(ema_max, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)


def save(path: str, state: dict) -> None:
    tmp = path + ".partial"
    torch.save(state, tmp)
    os.replace(tmp, path)


def package_record(onnx_path: str, key: str) -> dict:
    """The manifest.json beside a package's graph: its object `key` ({} when there is none)."""
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(onnx_path)), "manifest.json")) as f:
            v = json.load(f).get(key, {})
    except (OSError, ValueError, AttributeError):
        return {}
    return v if isinstance(v, dict) else {}


def package_architecture(onnx_path: str) -> dict:
    """The `architecture` the manifest.json beside a package's graph records ({} when there is none)."""
    return package_record(onnx_path, "architecture")


def prior_training(onnx_path: str) -> tuple:
    """(steps, wall seconds) the package whose graph onnx_path is was trained for, from its manifest.json beside
    it; (0, 0.0) for what it does not say."""
    t = package_record(onnx_path, "training")

    def number(k):
        v = t.get(k, 0)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else 0

    return int(number("steps")), float(number("wall_s"))


# A distilled model's manifest records its own phase under training.<key>; the phases its teacher went through
# travel with it under training.prior_phases (earliest first), through distill.py, progressive.py and train.py
# --init-onnx alike, so the recipe keeps every phase.
PHASE_KEYS = ("distillation", "progressive_distillation")


def prior_phases(training: dict) -> list:
    """The distillation phases a model went through, earliest first, from its manifest's training record (or a
    checkpoint's, where progressive.py keeps its own phase under "progressive"); [] for what it does not say."""
    own = dict(training) if isinstance(training, dict) else {}
    if "progressive" in own:
        own["progressive_distillation"] = own.pop("progressive")
    return list(own.get("prior_phases") or []) + [{"phase": k, **own[k]} for k in PHASE_KEYS if k in own]


def package_shape(a, arch: dict) -> None:
    """A run that starts from a package's graph takes that graph's block widths, attention levels and layers
    (its manifest's `architecture`) over --channels / --attention / --layers-per-block: the weights decide the
    shape, so `make train-latent LATENT_INIT=...` needs no widths. A record that does not say, or says something
    malformed, leaves the arguments (state_from_onnx then names what does not fit)."""
    widths, attn, layers = arch.get("block_out_channels"), arch.get("attention_levels"), arch.get("layers_per_block")
    ints = lambda v: isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                        for x in v)
    if not ints(widths):
        return
    got = ",".join(str(w) for w in widths)
    if got != a.channels:
        print(f"--init-onnx: the package's widths {got} (not --channels {a.channels})", flush=True)
    a.channels = got
    if isinstance(attn, list) and len(attn) == len(widths) and all(isinstance(v, bool) for v in attn):
        a.attention = ",".join("1" if v else "0" for v in attn)
    if ints([layers]):
        a.layers_per_block = layers
    extra = arch.get("extra_layers") or []
    if isinstance(extra, list) and len(extra) == len(widths) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in extra):
        a.package_extra_layers = tuple(extra)
        if not a.extra_layers:
            a.extra_layers = ",".join(str(x) for x in extra)


def batch_maker(latents: list, data: str, cache: str, seed: int, probs: Probabilities, turns: bool = False):
    """The batch maker of a run: over latent packs (groups at several GSDs when more than one; `.C` their
    channels) or over a prepared data folder's images."""
    emb = caption_embeddings(cache)
    if latents:
        from .latent_data import LatentBatchMaker, load_pack

        packs = [load_pack(p) for p in latents if p]
        return LatentBatchMaker(packs if len(packs) > 1 else packs[0], emb, seed=seed, probs=probs, turns=turns)
    return BatchMaker(load_aid(data, "train", cache), load_maps(data, "train", cache), emb, seed=seed, probs=probs)


def draw_batch(bm, latent: bool, tile: int, batch: int, low_res: bool, dev) -> tuple:
    """One training batch on dev and its resolution. Latent: AID scenes are 18 cells, so 16-cell crops (twice the
    rows); maps tiles at the native tile, or 16 cells in a low-resolution phase. Pixels: 32 px in a
    low-resolution phase (twice the rows), else the native tile."""
    if latent:
        src = "aid" if bm.rng.random() < bm.p.aid else "maps"
        res = 16 if (src == "aid" or low_res) else tile
        b = bm.batch(batch * max(1, (tile // res) ** 2 // 2), res, src)
    else:
        res = 32 if (low_res and tile > 32) else tile
        b = bm.batch(batch * (2 if res < tile else 1), res)
    return {k: v.to(dev) for k, v in b.items()}, res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="folder written by prepare-data")
    ap.add_argument("--pack", default="", help="training pack (training/pack.py) to unpack into the cache first, "
                                               "for a machine without the data folder")
    ap.add_argument("--latents", action="append", default=[], help="latent pack (training/latent_data.py "
                    "encode; shards comma-separated): train a latent model on the autoencoder's latents instead of "
                    "images (--tile in latent cells). Repeat for groups at other GSDs (e.g. maps at 2.34 m beside "
                    "1.17 m): a batch draws from one group, with equal chance among those that hold its source")
    ap.add_argument("--init-onnx", default="", help="start from a package's fp32 denoiser graph (its weights as the "
                    "model and EMA; optimizer state starts fresh and re-warms): continue from what is committed")
    ap.add_argument("--guidance-input", action="store_true", help="the cond vector ends with the guidance scale "
                    "(train a guidance-distillable layout; the scale is fed as 1 = unguided here)")
    ap.add_argument("--channels", default="32,64,96", help="UNet block widths (the CPU recipe's default)")
    ap.add_argument("--layers-per-block", type=int, default=1)
    ap.add_argument("--extra-layers", default="", help="comma list per level: ResNet layers beyond --layers-per-block "
                    "in that level's down and up block (not at attention levels). With --init-onnx from a package "
                    "with fewer, the new layers start as identities (model.grow_state): a grown UNet that computes "
                    "what the package did and trains on with more capacity")
    ap.add_argument("--tile", type=int, default=64, help="native tile in px (16: a coarse base model for the cascade)")
    ap.add_argument("--attention", default="", help="comma list of 0/1 per level (default: the lowest level only)")
    ap.add_argument("--ema-out", default="", help="also write the EMA weights alone (small, for export) here")
    ap.add_argument("--out", default="runs/train")
    ap.add_argument("--minutes", type=float, default=70.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--low-res-share", type=float, default=0.5, help="share of time at 32 px")
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--save-every", type=float, default=5.0, help="minutes")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", default="", help="start from this checkpoint's EMA weights (a fine-tuning phase); "
                    "optimizer state starts fresh")
    ap.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                    help="cosine: decay from --lr to --lr-min over the time budget (after the warm-up)")
    ap.add_argument("--lr-min", type=float, default=2e-5)
    ap.add_argument("--loss-weight", choices=tuple(LOSS_WEIGHTS), default="min-snr",
                    help="per-timestep weight of the v loss: min-snr (min-SNR-5) or snr-plus-one (min(SNR, 5) + 1 on "
                    "the x0 error: high-noise steps, where layout and composition form, keep their weight)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                    help="bf16: the forward pass under torch.autocast in bfloat16 (weights, gradients' accumulation, "
                    "optimizer and EMA stay float32; the loss is taken in float32). On CPUs with AMX (Intel Xeon 4th "
                    "generation on) a step of the 96,96,144 latent UNet takes about 0.4 of the float32 time; on CPUs "
                    "without native bfloat16 it is tens of times slower than float32. auto: bf16 where the device has "
                    "it natively, else fp32 (the checkpoint records both what was asked and what ran)")
    ap.add_argument("--aid-share", type=float, default=Probabilities.aid,
                    help="share of batches drawn from AID scenes (class prompts, no layout); the rest are maps tiles "
                         "with their layouts (default %(default)s)")
    ap.add_argument("--latent-turns", action="store_true",
                    help="also flip and turn the latents (as 1.0.0a1-a14 were trained): with TAEF2 a turned latent "
                    "is off the autoencoder's manifold and decodes as streaks (latent_data dihedral-check), so the "
                    "default is crops as encoded")
    ap.add_argument("--adv-weight", type=float, default=0.0,
                    help="adversarial fine-tuning (training/adversarial.py): base weight of a critic's term on the x0 "
                    "predictions, scaled each step to the squared-error gradient at the last layer (0: off; latent "
                    "models only)")
    ap.add_argument("--adv-t-max", type=int, default=500, help="the adversarial term acts on rows with t below this")
    ap.add_argument("--adv-lr", type=float, default=1e-4, help="the critic's learning rate")
    ap.add_argument("--adv-warmup", type=int, default=200, help="steps the critic learns alone before the term starts")
    a = ap.parse_args(argv)
    a.package_extra_layers = ()
    if a.adv_weight < 0 or (a.adv_weight > 0 and not a.latents):
        ap.error("--adv-weight needs a value >= 0, and --latents (the critic judges latents)")
    if not 0.0 <= a.aid_share <= 1.0:
        ap.error("--aid-share must be within [0, 1]")
    probs = Probabilities(aid=a.aid_share)
    if a.init_onnx and not a.guidance_input and package_architecture(a.init_onnx).get("guidance_input"):
        a.guidance_input = True  # a guidance-distilled package trains on at w = 1 (distill.py distils it again)
        print(f"{a.init_onnx}: a guidance-distilled graph, trained on with --guidance-input", flush=True)
    if not a.data and not a.pack and not a.latents:
        ap.error("give --data (prepared folder), --pack (training pack) or --latents (latent pack)")
    if a.init_onnx:
        package_shape(a, package_architecture(a.init_onnx))
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    native_bf16 = torch.cuda.is_bf16_supported() if dev == "cuda" else cpu_has_bf16()
    a.precision_requested, a.precision = a.precision, resolve_precision(a.precision, native_bf16)
    if a.precision == "bf16" and not native_bf16:
        print("--precision bf16: this device has no native bfloat16; the forward pass runs through reference "
              "kernels, tens of times slower than --precision fp32 (or auto)", flush=True)
    os.makedirs(a.out, exist_ok=True)
    cache = os.path.join(os.path.dirname(a.out.rstrip("/")) or ".", "cache")
    if a.pack:
        from .pack import unpack

        print("unpacked:", unpack(a.pack, cache), flush=True)
    bm = batch_maker(a.latents, a.data, cache, a.seed, probs, a.latent_turns)
    image_channels = bm.C if a.latents else 3
    widths = tuple(int(c) for c in a.channels.split(","))
    attn = tuple(bool(int(v)) for v in a.attention.split(",")) if a.attention else \
        (False,) * (len(widths) - 1) + (True,)
    if len(attn) != len(widths):
        ap.error("--attention needs one 0/1 per level of --channels")
    try:
        extra = tuple(int(v) for v in a.extra_layers.split(",")) if a.extra_layers else ()
    except ValueError:
        ap.error("--extra-layers needs one whole number per level of --channels")
    cond_dim = bm.lay.dim + (1 if a.guidance_input else 0)
    if a.latents:
        from ..core.conditions.encoding import spatial_channels

        cfg = DenoiserConfig(image_channels=image_channels, spatial_channels=spatial_channels(image_channels=image_channels),
                             cond_dim=cond_dim, block_out_channels=widths, layers_per_block=a.layers_per_block,
                             attention_levels=attn, tile=a.tile, norm_num_groups=min(32, widths[0] // 4),
                             attention_head_dim=min(32, widths[-1]), guidance_input=a.guidance_input,
                             extra_layers=extra)
    else:
        cfg = DenoiserConfig(cond_dim=cond_dim, block_out_channels=widths, layers_per_block=a.layers_per_block,
                             attention_levels=attn, tile=a.tile, guidance_input=a.guidance_input,
                             extra_layers=extra)
    try:
        extra_per_level(cfg)
    except ValueError as e:
        ap.error(str(e))
    model = Denoiser(cfg).to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    adv = None
    if a.adv_weight > 0:
        from .adversarial import Adversary

        adv = Adversary(cfg.image_channels, cfg.spatial_channels, cfg.cond_dim, a.adv_weight, a.adv_t_max,
                        lr=a.adv_lr, warmup=a.adv_warmup, device=dev)
    step, elapsed0 = 0, 0.0
    # step0: where this run's learning-rate warm-up starts; prior_wall_s: the training time of what it starts from
    # (a committed package's manifest), so that the steps and time of the instalments add up in the next export
    step0, prior_wall_s, phases = 0, 0.0, []
    ckpt = os.path.join(a.out, "last.pt")
    if a.init_onnx and not (a.resume and os.path.exists(ckpt)):
        from .export import state_from_onnx

        small_cfg = dataclasses.replace(cfg, extra_layers=a.package_extra_layers)
        if small_cfg.extra_layers != cfg.extra_layers:  # grow: the package's UNet with identity layers added
            sd = grow_state(state_from_onnx(a.init_onnx, Denoiser(small_cfg)), small_cfg, model)
            print(f"grown: extra layers {small_cfg.extra_layers or 'none'} -> {cfg.extra_layers} (new layers start "
                  "as identities)", flush=True)
        else:
            sd = state_from_onnx(a.init_onnx, model)
        model.load_state_dict(sd); ema.load_state_dict(sd)
        step0, prior_wall_s = prior_training(a.init_onnx)
        phases = prior_phases(package_record(a.init_onnx, "training"))
        step = step0
        print(f"initialised from {a.init_onnx} (the package's fp32 graph, step {step})", flush=True)
    if a.init and not (a.resume and os.path.exists(ckpt)):
        st = torch.load(a.init, map_location=dev, weights_only=True)
        if DenoiserConfig.from_dict(st["config"]) != cfg:
            raise SystemExit(f"--init {a.init}: its config {st['config']} differs from this run's {cfg.to_dict()}")
        model.load_state_dict(st["ema"]); ema.load_state_dict(st["ema"])
        print(f"initialised from {a.init} (EMA weights, step {st.get('step')})", flush=True)
    if a.resume and os.path.exists(ckpt):
        st = torch.load(ckpt, map_location=dev, weights_only=True)
        model.load_state_dict(st["model"]); ema.load_state_dict(st["ema"]); opt.load_state_dict(st["opt"])
        step, elapsed0 = st["step"], st["elapsed_s"]
        step0, prior_wall_s = st.get("step0", 0), st.get("prior_wall_s", 0.0)
        phases = st.get("prior_phases", [])
        if adv is not None and "adversary" in st:
            adv.load_state_dict(st["adversary"])
    ac = alphas_cumprod().to(dev)
    weight = LOSS_WEIGHTS[a.loss_weight](ac)
    budget = a.minutes * 60
    t_start, last_save = time.time() - elapsed0, time.time()

    def record() -> dict:  # what every checkpoint holds (the EMA weights and where the training stands)
        return {"ema": ema.state_dict(), "config": cfg.to_dict(), "schedule": SCHEDULE, "step": step,
                "elapsed_s": time.time() - t_start, "step0": step0, "prior_wall_s": prior_wall_s, "device": dev,
                "prior_phases": phases}

    def checkpoint() -> dict:  # last.pt: the record plus what resuming needs (weights, optimizer, critic)
        return {"model": model.state_dict(), "opt": opt.state_dict(), "args": vars(a), **record(),
                **({"adversary": adv.state_dict()} if adv else {})}
    log = open(os.path.join(a.out, "log.csv"), "a")
    losses, adv_log = [], []
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device={dev} params={n_params/1e6:.2f}M cond_dim={cfg.cond_dim} threads={torch.get_num_threads()} "
          f"precision={a.precision}" + (f" (asked: {a.precision_requested})" if a.precision_requested != a.precision
                                        else ""),
          flush=True)
    while True:
        elapsed = time.time() - t_start
        if elapsed >= budget:
            break
        b, res = draw_batch(bm, bool(a.latents), cfg.tile, a.batch, elapsed < a.low_res_share * budget, dev)
        bs = len(b["x0"])
        if a.guidance_input:  # unguided rows: the guidance input at w = 1 (encoded 0), distillation teaches the rest
            b["cond"] = torch.cat([b["cond"], torch.zeros(len(b["cond"]), 1, device=dev)], 1)
        x0 = b["x0"]
        t = torch.randint(0, 1000, (bs,), device=dev)
        noise = torch.randn_like(x0)
        at = ac[t].view(-1, 1, 1, 1)
        xt = at.sqrt() * x0 + (1 - at).sqrt() * noise
        v = at.sqrt() * noise - (1 - at).sqrt() * x0
        lr = a.lr * min(1.0, (step - step0 + 1) / 200)
        if a.lr_schedule == "cosine":
            lr = cosine_lr(lr, a.lr_min, elapsed / budget)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            pred = model(xt, t.float(), b["spatial"], b["cond"])
        loss = (weight[t] * F.mse_loss(pred.float(), v, reduction="none").mean((1, 2, 3))).mean()
        if adv is not None:
            loss, info = adv.denoiser_term(loss, pred, xt, x0, t, at, b["spatial"], b["cond"],
                                           model.unet.conv_out.weight)
            adv_log.append(info)
        optimizer_step(model, ema, opt, loss, lr, a.ema, step)
        step += 1
        losses.append(loss.item())
        if step % 25 == 0:
            msg = f"{step},{elapsed:.0f},{res},{np.mean(losses):.4f}"
            print(msg, flush=True)
            log.write(msg + "\n"); log.flush()
            losses = []
            if adv_log:
                keys = ("critic", "adv", "lambda")
                print("  adversarial " + " ".join(
                    f"{k}={np.mean([d[k] for d in adv_log if k in d]):.4f}" for k in keys
                    if any(k in d for d in adv_log)), flush=True)
                adv_log = []
        if time.time() - last_save > a.save_every * 60:
            save(ckpt, checkpoint())
            last_save = time.time()
    save(ckpt, checkpoint())
    if a.ema_out:
        save(a.ema_out, record())
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump({"steps": step, "steps_this_chain": step - step0, "wall_s": round(time.time() - t_start),
                   "prior_wall_s": round(prior_wall_s), "device": dev,
                   "threads": torch.get_num_threads(), "params": n_params, "args": vars(a)}, f, indent=1)
    print(f"done: {step} steps in {time.time() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
