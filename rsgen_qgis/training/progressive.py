"""Progressive distillation (Salimans & Ho 2022): a student that takes in one deterministic DDIM step what its
teacher takes in two, so a package samples in half the steps (20 -> 10, then 10 -> 5 with the student as the
next teacher).

    python -m rsgen_qgis.training.progressive --latents PACK --teacher models/rsgen-base-1 [--teacher-steps 20] \\
        --out runs/progressive-latent --minutes 95

The teacher is a train.py / distill.py / progressive.py checkpoint (.pt: its EMA weights) or a package (its fp32
graph); the student starts as a copy of it. Both are evaluated on the run time's own grid: DDIM (eta 0) with
'trailing' timesteps, where n steps visit t = 1000 k / n - 1 and step back by 1000 / n, the last step landing on the
clean image (alphas_cumprod 1, core.engine.samplers.DDIMSampler). With N teacher steps the student's grid (N / 2
steps) is every other teacher timestep, so one student step t -> t - 2000 / N spans exactly two teacher steps.

Each training step draws a batch as train.py does (conditions dropped at random), a student timestep t of its grid
(uniform), noise, z_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, and for a guidance-distilled teacher a guidance scale w
(as distill.py: uniform in the distilled range, a quarter at the default 3) given to both. The teacher takes two
DDIM steps from z_t; the target is the x0 that makes one DDIM step from z_t land where the two did:
    x~ = (z'' - (s'' / s_t) z_t) / (a'' - (s'' / s_t) a_t)      (a = sqrt(alphas_cumprod), s = sqrt(1 - a^2))
(at the last step, z'' is the clean image: x~ = z''), expressed as the v-prediction the network gives,
v~ = (a_t z_t - x~) / s_t. The loss is train.py's weighting on the v error. The checkpoint is train.py's format
with a `progressive` record; export.py sets the package's default sampler to DDIM at the student's steps.
With --resume a run goes on from OUT/last.pt (student, EMA, optimizer, steps and time) where one is there, for the
same teacher and steps; --minutes is then the budget of all runs together, as train.py's, so instalments add up.
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

from .data import Probabilities
from .distill import load_teacher, sample_guidance, with_scale
from .train import LOSS_WEIGHTS, alphas_cumprod, batch_maker, cosine_lr, draw_batch, optimizer_step, package_record, \
    save

N_TRAIN = 1000


def student_timesteps(teacher_steps: int) -> np.ndarray:
    """The student's DDIM grid ('trailing', as the run time spaces it) for a teacher sampled in teacher_steps."""
    if teacher_steps < 2 or teacher_steps % 2 or N_TRAIN % teacher_steps:
        raise ValueError(f"teacher steps must be even and divide {N_TRAIN}: {teacher_steps}")
    n = teacher_steps // 2
    return np.round(np.arange(N_TRAIN, 0, -N_TRAIN / n))[:n].astype(np.int64) - 1


def _coef(ac: torch.Tensor, t: torch.Tensor) -> tuple:
    """(sqrt(a), sqrt(1 - a)) at timesteps t (rows), with a = 1 where t < 0 (DDIM's last step: the clean image)."""
    a = torch.where(t >= 0, ac[t.clamp(min=0)], torch.ones_like(t, dtype=ac.dtype))
    return a.sqrt().view(-1, 1, 1, 1), (1 - a).clamp(min=0).sqrt().view(-1, 1, 1, 1)


def ddim_step(v: torch.Tensor, z: torch.Tensor, ac: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor):
    """One DDIM (eta 0) step of a v-prediction from timestep t to t_prev (rows; t_prev < 0: the clean image)."""
    a, s = _coef(ac, t)
    x0 = a * z - s * v
    eps = s * z + a * v
    ap, sp = _coef(ac, t_prev)
    return ap * x0 + sp * eps


def two_step_target(teacher_v, z: torch.Tensor, ac: torch.Tensor, t: torch.Tensor, half: int) -> torch.Tensor:
    """The v a student should predict at z_t so that one DDIM step t -> t - 2 half lands where the teacher's two
    steps t -> t - half -> t - 2 half land. teacher_v(z, t) -> v."""
    t1, t2 = t - half, t - 2 * half
    z1 = ddim_step(teacher_v(z, t), z, ac, t, t1)
    z2 = ddim_step(teacher_v(z1, t1), z1, ac, t1, t2)
    a, s = _coef(ac, t)
    a2, s2 = _coef(ac, t2)
    x = (z2 - (s2 / s) * z) / (a2 - (s2 / s) * a)
    return (a * z - x) / s


def teacher_default_steps(teacher: str) -> int:
    """The sampling steps a package teacher runs by default (its manifest's defaults.steps); 20 for a checkpoint
    or a manifest that does not say."""
    if teacher.endswith(".pt"):
        return 20
    n = package_record(teacher if teacher.endswith(".onnx") else os.path.join(teacher, "denoiser.onnx"),
                       "defaults").get("steps")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 2 else 20


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="folder written by prepare-data (a pixel teacher)")
    ap.add_argument("--latents", action="append", default=[], help="latent pack(s) as train.py takes them")
    ap.add_argument("--teacher", required=True, help="a checkpoint (.pt: its EMA weights), or a package folder or "
                    "its denoiser.onnx")
    ap.add_argument("--teacher-steps", type=int, default=0,
                    help="the teacher's DDIM steps; the student takes half (0: a package teacher's default steps, "
                         "so a student distils again from its own grid; 20 for a checkpoint)")
    ap.add_argument("--aid-share", type=float, default=Probabilities.aid, help="share of AID batches, as train.py")
    ap.add_argument("--loss-weight", choices=tuple(LOSS_WEIGHTS), default="snr-plus-one", help="as train.py")
    ap.add_argument("--out", default="runs/progressive")
    ap.add_argument("--minutes", type=float, default=75.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--lr-min", type=float, default=5e-6)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--save-every", type=float, default=5.0, help="minutes")
    ap.add_argument("--resume", action="store_true", help="go on from OUT/last.pt where it is there (--minutes: "
                    "the budget of all runs together)")
    a = ap.parse_args(argv)
    if not a.data and not a.latents:
        ap.error("give --data (a pixel teacher's prepared folder) or --latents (a latent teacher's packs)")
    a.teacher_steps = a.teacher_steps or teacher_default_steps(a.teacher)
    try:
        grid = student_timesteps(a.teacher_steps)
    except ValueError as e:
        ap.error(f"--teacher-steps {a.teacher_steps}: {e}")
    half = N_TRAIN // a.teacher_steps
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    os.makedirs(a.out, exist_ok=True)
    cache = os.path.join(os.path.dirname(a.out.rstrip("/")) or ".", "cache")
    bm = batch_maker(a.latents, a.data, cache, a.seed, Probabilities(aid=a.aid_share))
    teacher, trec = load_teacher(a.teacher)
    cfg = teacher.cfg
    if cfg.cond_dim - int(cfg.guidance_input) != bm.lay.dim or cfg.image_channels != (bm.C if a.latents else 3):
        raise SystemExit(f"--teacher {a.teacher}: its conditions or channels do not match this data ({cfg.to_dict()})")
    if trec["schedule"].get("prediction_type", "v_prediction") != "v_prediction":
        raise SystemExit(f"--teacher {a.teacher}: progressive distillation here takes v-prediction teachers")
    teacher = teacher.to(dev).eval().requires_grad_(False)
    model = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    ac = alphas_cumprod().to(dev)
    weight = LOSS_WEIGHTS[a.loss_weight](ac)
    grid_t = torch.from_numpy(grid).to(dev)
    budget, step, elapsed0 = a.minutes * 60, 0, 0.0
    ckpt = os.path.join(a.out, "last.pt")
    if a.resume and os.path.exists(ckpt):
        st = torch.load(ckpt, map_location=dev, weights_only=True)
        rec = st.get("progressive") or {}
        if (rec.get("teacher"), rec.get("teacher_sampling_steps")) != (trec["source"], a.teacher_steps):
            raise SystemExit(f"--resume: {ckpt} distils {rec.get('teacher')} at {rec.get('teacher_sampling_steps')} "
                             f"steps, not {trec['source']} at {a.teacher_steps}")
        model.load_state_dict(st["model"]); ema.load_state_dict(st["ema"]); opt.load_state_dict(st["opt"])
        step, elapsed0 = int(rec["steps"]), float(st["elapsed_s"])
        gen.manual_seed(a.seed + step)  # not the draws the first run made
        print(f"resumed {ckpt}: {step} steps, {elapsed0 / 60:.1f} min", flush=True)
    t_start, last_save = time.time() - elapsed0, time.time()
    log = open(os.path.join(a.out, "log.csv"), "a")
    losses, base = [], []
    print(f"device={dev} teacher step {trec['step']}: {a.teacher_steps} DDIM steps -> {len(grid)} "
          f"threads={torch.get_num_threads()}", flush=True)

    def checkpoint():
        el = time.time() - t_start
        save(ckpt, {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "config": model.cfg.to_dict(), "schedule": trec["schedule"], "step": trec["step"] + step,
                    "step0": trec["step"], "elapsed_s": el, "prior_wall_s": trec["wall_s"], "args": vars(a),
                    "device": dev, "progressive": {"steps": step, "wall_s": round(el), "teacher": trec["source"],
                                                   "teacher_step": trec["step"],
                                                   "teacher_sampling_steps": a.teacher_steps,
                                                   "sampling_steps": len(grid), "sampler": "ddim"},
                    "prior_phases": trec["prior_phases"]})

    while time.time() - t_start < budget:
        elapsed = time.time() - t_start
        b, res = draw_batch(bm, bool(a.latents), cfg.tile, a.batch, False, dev)
        x0, spatial, cond = b["x0"], b["spatial"], b["cond"]
        bs = len(x0)
        t = grid_t[torch.randint(0, len(grid), (bs,), generator=gen).to(dev)]
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        sa, sb = _coef(ac, t)
        z = sa * x0 + sb * noise
        c = with_scale(cond, sample_guidance(bs, gen).to(dev)) if cfg.guidance_input else cond
        with torch.no_grad():
            target = two_step_target(lambda zz, tt: teacher(zz, tt.float(), spatial, c), z, ac, t, half)
        lr = cosine_lr(a.lr * min(1.0, (step + 1) / 100), a.lr_min, elapsed / budget)
        pred = model(z, t.float(), spatial, c)
        loss = (weight[t] * F.mse_loss(pred, target, reduction="none").mean((1, 2, 3))).mean()
        optimizer_step(model, ema, opt, loss, lr, a.ema, step)
        if step % 5 == 0:  # the same loss for the teacher's own single step (the gap the student closes), sampled
            with torch.no_grad():
                one = teacher(z, t.float(), spatial, c)
                base.append((weight[t] * F.mse_loss(one, target, reduction="none").mean((1, 2, 3))).mean().item())
        step += 1
        losses.append(loss.item())
        if step % 25 == 0:
            msg = f"{step},{elapsed:.0f},{res},{np.mean(losses):.5f},{np.mean(base):.5f}"
            print(msg, flush=True)
            log.write(msg + "\n"); log.flush()
            losses, base = [], []
        if time.time() - last_save > a.save_every * 60:
            checkpoint()
            last_save = time.time()
    checkpoint()
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump({"steps": step, "wall_s": round(time.time() - t_start), "device": dev,
                   "threads": torch.get_num_threads(), "teacher": trec["source"], "teacher_step": trec["step"],
                   "teacher_sampling_steps": a.teacher_steps, "sampling_steps": len(grid), "args": vars(a)},
                  f, indent=1)
    print(f"done: {step} steps in {time.time() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
