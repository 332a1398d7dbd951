"""Guidance distillation: a student that gives, in one evaluation, what the teacher gives with classifier-free
guidance in two (Meng et al. 2023, "On distillation of guided diffusion models", stage 1).

    python -m rsgen_qgis.training.distill --data DATA --teacher runs/train3/last.pt --out runs/distill --minutes 75
    python -m rsgen_qgis.training.distill --latents PACK --teacher models/rsgen-base-1 --out runs/distill-latent ...

The teacher is a train.py checkpoint (its EMA weights) or a committed package (its fp32 graph and the
architecture its manifest records); pixel or latent alike (--data or --latents, batches drawn as train.py draws
them). A teacher that is itself guidance-distilled (a package trained on with train.py --guidance-input after an
earlier distillation) is evaluated at w = 1 for both branches, and the student starts as a copy of it: a
package stays one graph from instalment to instalment (train, distill, train on, distill again).

The student is the teacher's architecture with one more condition value, the guidance scale w (encoded as in
core.conditions.encoding: (w - 1) / 4); it starts as the teacher with that input's weights at zero, so at w = 1 it is
the teacher's conditional prediction from step 0. Each step draws a training batch (the same conditions, each
present or dropped at random, as training), a timestep and noise, and regresses the student on the teacher's
guided prediction u + w (c - u), where u is the teacher's unconditional branch exactly as the run time forms
it (core.conditions.unconditional: the prompt and the layout dropped, their presence flags off, the layout
channels zeroed); w is uniform in the distilled range, a quarter of the batch at the default 3. Rows with
nothing to drop have u = c, so the student learns that w changes nothing there. Loss weighting, EMA and
checkpoint format are train.py's, so export.py exports the result; its step count and training time go on from
the teacher's, and the checkpoint records the distillation's own (`distillation`).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..core.conditions.encoding import GUIDABLE, GUIDANCE_RANGE, GUIDANCE_SCALE, GUIDANCE_SHIFT, CondLayout, \
    spatial_layout
from .data import Probabilities
from .model import Denoiser, DenoiserConfig
from .train import (LOSS_WEIGHTS, alphas_cumprod, batch_maker, cosine_lr, draw_batch, optimizer_step, prior_phases,
                    prior_training, save)


def student_from(teacher: Denoiser) -> Denoiser:
    """The teacher with one more condition input (the guidance scale), its weights zero: same outputs."""
    cfg = DenoiserConfig.from_dict({**teacher.cfg.to_dict(), "cond_dim": teacher.cfg.cond_dim + 1,
                                    "guidance_input": True})
    student = Denoiser(cfg)
    st = dict(teacher.state_dict())
    w = st["cond_mlp.0.weight"]
    st["cond_mlp.0.weight"] = torch.cat([w, torch.zeros(w.shape[0], 1, dtype=w.dtype)], 1)
    student.load_state_dict(st)
    return student


def load_teacher(path: str) -> tuple:
    """(teacher model, its record: step, wall_s, schedule, source, prior_phases) from a train.py checkpoint (.pt:
    the EMA weights) or a package folder / its denoiser graph (the manifest's architecture, scheduler and
    training)."""
    if path.endswith(".pt"):
        st = torch.load(path, map_location="cpu", weights_only=True)
        model = Denoiser(DenoiserConfig.from_dict(st["config"]))
        model.load_state_dict(st["ema"])
        wall = st.get("elapsed_s", 0.0) + st.get("prior_wall_s", 0.0)
        return model, {"step": int(st.get("step", 0)), "wall_s": wall, "schedule": st["schedule"], "source": path,
                       "prior_phases": prior_phases(st)}
    from .export import state_from_onnx

    graph = path if path.endswith(".onnx") else os.path.join(path, "denoiser.onnx")
    with open(os.path.join(os.path.dirname(os.path.abspath(graph)), "manifest.json")) as f:
        m = json.load(f)
    arch = {k: v for k, v in m["architecture"].items() if k != "type"}
    model = Denoiser(DenoiserConfig.from_dict(arch))
    model.load_state_dict(state_from_onnx(graph, model))
    step, wall = prior_training(graph)
    source = f"{m.get('id', '?')} {m.get('version', '')} ({graph})"  # the graph at that path may be replaced later
    return model, {"step": step, "wall_s": wall, "schedule": m["scheduler"], "source": source,
                   "prior_phases": prior_phases(m.get("training") or {})}


def with_scale(cond: torch.Tensor, w) -> torch.Tensor:
    """A guidance-input model's condition rows: cond with the scale w (a number or one per row) encoded last."""
    w = torch.as_tensor(w, dtype=cond.dtype, device=cond.device).expand(len(cond)).reshape(-1, 1)
    return torch.cat([cond, (w - GUIDANCE_SHIFT) / GUIDANCE_SCALE], 1)


def unconditional_batch(spatial: torch.Tensor, cond: torch.Tensor, lay: CondLayout, layout_ch: tuple):
    """The run time's unconditional branch for a training batch: every present condition GUIDABLE names
    dropped (prompt: embedding and flag zeroed; layout: flag off and one-hot channels zeroed)."""
    seg = lay.segments
    cu, su = cond.clone(), spatial.clone()
    if "text" in GUIDABLE:
        o, n = seg["text"]
        cu[:, o:o + n] = 0
        cu[:, seg["text_present"][0]] = 0
    if "layout" in GUIDABLE:
        cu[:, seg["layout_present"][0]] = 0
        o, n = layout_ch
        su[:, o:o + n] = 0
    return su, cu


def sample_guidance(n: int, gen: torch.Generator, default: float = 3.0, share_default: float = 0.25) -> torch.Tensor:
    lo, hi = GUIDANCE_RANGE
    w = lo + (hi - lo) * torch.rand(n, generator=gen)
    w[torch.rand(n, generator=gen) < share_default] = default
    return w


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="folder written by prepare-data (a pixel teacher)")
    ap.add_argument("--latents", action="append", default=[], help="latent pack(s) as train.py takes them (a latent "
                    "teacher)")
    ap.add_argument("--teacher", required=True, help="a train.py checkpoint (.pt: its EMA weights), or a package "
                    "folder or its denoiser.onnx (the committed fp32 graph)")
    ap.add_argument("--aid-share", type=float, default=Probabilities.aid, help="share of AID batches, as train.py")
    ap.add_argument("--loss-weight", choices=tuple(LOSS_WEIGHTS), default="min-snr", help="as train.py")
    ap.add_argument("--out", default="runs/distill")
    ap.add_argument("--minutes", type=float, default=75.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-min", type=float, default=1e-5)
    ap.add_argument("--low-res-share", type=float, default=0.3, help="share of time at 32 px")
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--save-every", type=float, default=5.0, help="minutes")
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    if not a.data and not a.latents:
        ap.error("give --data (a pixel teacher's prepared folder) or --latents (a latent teacher's packs)")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    os.makedirs(a.out, exist_ok=True)
    cache = os.path.join(os.path.dirname(a.out.rstrip("/")) or ".", "cache")
    bm = batch_maker(a.latents, a.data, cache, a.seed, Probabilities(aid=a.aid_share))
    teacher, trec = load_teacher(a.teacher)
    tcfg = teacher.cfg
    if tcfg.cond_dim - int(tcfg.guidance_input) != bm.lay.dim or \
            tcfg.image_channels != (bm.C if a.latents else 3):
        raise SystemExit(f"--teacher {a.teacher}: its conditions or channels do not match this data "
                         f"({tcfg.to_dict()})")
    teacher = teacher.to(dev).eval().requires_grad_(False)
    model = (copy.deepcopy(teacher) if tcfg.guidance_input else student_from(teacher)).to(dev).train()
    model.requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    step, elapsed0 = 0, 0.0
    ckpt = os.path.join(a.out, "last.pt")
    if a.resume and os.path.exists(ckpt):
        st = torch.load(ckpt, map_location=dev, weights_only=True)
        model.load_state_dict(st["model"]); ema.load_state_dict(st["ema"]); opt.load_state_dict(st["opt"])
        step, elapsed0 = st["distillation"]["steps"], st["elapsed_s"]
    layout_ch = tuple(spatial_layout()["layout"])
    ac = alphas_cumprod().to(dev)
    weight = LOSS_WEIGHTS[a.loss_weight](ac)
    budget = a.minutes * 60
    t_start, last_save = time.time() - elapsed0, time.time()
    log = open(os.path.join(a.out, "log.csv"), "a")
    losses, w_at1 = [], []
    print(f"device={dev} teacher step {trec['step']} student cond_dim={model.cfg.cond_dim} "
          f"threads={torch.get_num_threads()}", flush=True)

    def checkpoint():  # steps and time go on from the teacher's (export.py adds prior_wall_s)
        el = time.time() - t_start
        save(ckpt, {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "config": model.cfg.to_dict(), "schedule": trec["schedule"], "step": trec["step"] + step,
                    "step0": trec["step"], "elapsed_s": el, "prior_wall_s": trec["wall_s"], "args": vars(a),
                    "device": dev, "distillation": {"steps": step, "wall_s": round(el), "teacher": trec["source"],
                                                    "teacher_step": trec["step"]},
                    "prior_phases": trec["prior_phases"]})

    while True:
        elapsed = time.time() - t_start
        if elapsed >= budget:
            break
        b, res = draw_batch(bm, bool(a.latents), tcfg.tile, a.batch, elapsed < a.low_res_share * budget, dev)
        x0, spatial, cond = b["x0"], b["spatial"], b["cond"]
        bs = len(x0)
        t = torch.randint(0, 1000, (bs,), generator=gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        at = ac[t].view(-1, 1, 1, 1)
        xt = at.sqrt() * x0 + (1 - at).sqrt() * noise
        w = sample_guidance(bs, gen).to(dev)
        su, cu = unconditional_batch(spatial, cond, bm.lay, layout_ch)
        with torch.no_grad():
            both = torch.cat([cond, cu])
            o = teacher(torch.cat([xt, xt]), torch.cat([t, t]).float(), torch.cat([spatial, su]),
                        with_scale(both, 1.0) if tcfg.guidance_input else both)
            c, u = o[:bs], o[bs:]
            target = u + w.view(-1, 1, 1, 1) * (c - u)
        lr = cosine_lr(a.lr * min(1.0, (step + 1) / 100), a.lr_min, elapsed / budget)
        pred = model(xt, t.float(), spatial, with_scale(cond, w))
        loss = (weight[t] * F.mse_loss(pred, target, reduction="none").mean((1, 2, 3))).mean()
        optimizer_step(model, ema, opt, loss, lr, a.ema, step)
        with torch.no_grad():
            # the gap the student closes: the same loss for "ignore w" (the teacher's conditional prediction)
            w_at1.append((weight[t] * F.mse_loss(c, target, reduction="none").mean((1, 2, 3))).mean().item())
        step += 1
        losses.append(loss.item())
        if step % 25 == 0:
            msg = f"{step},{elapsed:.0f},{res},{np.mean(losses):.5f},{np.mean(w_at1):.5f}"
            print(msg, flush=True)
            log.write(msg + "\n"); log.flush()
            losses, w_at1 = [], []
        if time.time() - last_save > a.save_every * 60:
            checkpoint()
            last_save = time.time()
    checkpoint()
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump({"steps": step, "wall_s": round(time.time() - t_start), "device": dev,
                   "threads": torch.get_num_threads(), "teacher": trec["source"], "teacher_step": trec["step"],
                   "args": vars(a)}, f, indent=1)
    print(f"done: {step} steps in {time.time() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
