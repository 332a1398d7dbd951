"""Diagnostics of a latent denoiser.

layout-use: how much a latent checkpoint uses its layout: the x0 error of its prediction at a few noise levels, from the
same noisy latents, with the layout and with the layout taken away (as the unconditional branch takes it).

    python -m rsgen_qgis.training.diagnose layout-use --checkpoint runs/train-latent/last.pt \\
        --latents runs/latents/maps256.npz [--n 64] [--timesteps 999,900,700,500]

The layout decides where roads and houses go, and that is settled in the first, noisiest steps: a model that draws
a town from a layout predicts x0 markedly better with it there. Beside it, the gain a per-cell linear map from
the layout fractions to the latents gets over the pack's mean latent (what the layout can tell at the finest
scale without any context). Figures are means over the same noise for both rows, so they differ only by the
layout; rsgen-base-1's card records them per instalment.

vs-linear: how much better than a linear filter a denoiser (a checkpoint's EMA weights, or a package's fp32 graph)
predicts x0 from noisy latents of a pack it was not trained on, at a few noise levels:

    python -m rsgen_qgis.training.diagnose vs-linear (--checkpoint CKPT | --onnx models/rsgen-base-1/denoiser.onnx) \\
        --latents runs/latents/train.s1.npz [--n 240] [--timesteps 100,200,300,500,700]

Beside the model, on the same cells and the same noise: the per-element shrinkage a/(a^2 + s^2) x_t (the best
denoiser for independent unit-variance latents) and the least-squares linear filter on each cell's 3 x 3
neighbourhood of the noisy latents (all channels, fitted on the first half of the pack's AID scenes, every
figure scored on the second half). A denoiser no better than the 3 x 3 filter has learned only the latents'
second-order statistics: it draws Gaussian texture with the right colours, which TAEF2 decodes as shards.
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, Sequence

import numpy as np


def linear_layout_gain(pack: dict) -> Dict[str, float]:
    """x0 error (mean squared, standardised latents) of the pack's mean latent and of a least-squares per-cell map
    from the layout fractions, fitted on the first three quarters of the maps tiles and scored on the rest."""
    z = pack["maps_z"].astype(np.float32)
    lay = pack["maps_layout"].astype(np.float32) / 255.0
    n = len(z)
    cut = max(1, n * 3 // 4)
    if cut >= n:
        raise ValueError("linear_layout_gain needs at least 2 maps tiles")
    c, k = z.shape[1], lay.shape[1]
    x = np.concatenate([lay, np.ones_like(lay[:, :1])], 1).transpose(0, 2, 3, 1).reshape(n, -1, k + 1)
    y = z.transpose(0, 2, 3, 1).reshape(n, -1, c)
    w = np.linalg.lstsq(x[:cut].reshape(-1, k + 1), y[:cut].reshape(-1, c), rcond=None)[0]
    yt = y[cut:].reshape(-1, c)
    return {"mean_latent": float(((yt - y[:cut].reshape(-1, c).mean(0)) ** 2).mean()),
            "linear_map": float(((x[cut:].reshape(-1, k + 1) @ w - yt) ** 2).mean())}


def layout_use(checkpoint: str, pack: dict, caption_emb: dict, n: int = 64, timesteps: Sequence[int] = (999, 900, 700, 500),
               seed: int = 0, res: int = 0) -> Dict:
    """x0 error with and without the layout at each timestep, over n maps tiles of the pack (EMA weights)."""
    import torch

    from ..core.conditions.encoding import LAYOUT_CLASSES
    from .data import Probabilities
    from .latent_data import LatentBatchMaker
    from .model import Denoiser, DenoiserConfig
    from .train import alphas_cumprod

    st = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = DenoiserConfig.from_dict(st["config"])
    model = Denoiser(cfg)
    model.load_state_dict(st["ema"])
    model.eval()
    bm = LatentBatchMaker(pack, caption_emb, seed=seed, probs=Probabilities(layout=1.0, inpaint=0.0, guide=0.0,
                                                                             maps_text=0.0))
    b = bm.batch(n, res or min(cfg.tile, pack["maps_z"].shape[-1]), "maps")
    x0, spatial, cond = b["x0"], b["spatial"], b["cond"]
    off_spatial, off_cond = spatial.clone(), cond.clone()
    off_spatial[:, :len(LAYOUT_CLASSES)] = 0  # the layout channels lead the spatial input
    at, _ = bm.lay.segments["layout_present"]
    off_cond[:, at] = 0
    ac = alphas_cumprod()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=gen)
    rows = {}
    with torch.no_grad():
        for t in timesteps:
            a = ac[int(t)]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            tt = torch.full((len(x0),), float(t))
            err = []
            for sp, cd in ((spatial, cond), (off_spatial, off_cond)):
                x0p = a.sqrt() * xt - (1 - a).sqrt() * model(xt, tt, sp, cd)
                err.append(float(((x0p - x0) ** 2).mean()))
            rows[str(int(t))] = {"with_layout": err[0], "without": err[1], "gain": 1 - err[0] / err[1]}
    return {"checkpoint_step": int(st.get("step", -1)), "tiles": int(n), "latent_cells": int(x0.shape[-1]),
            "x0_error": rows}


def _linear_features(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N * (H-2) * (W-2), 9C + 1): every interior cell's 3 x 3 neighbourhood, all channels, and 1."""
    n, c, h, w = x.shape
    cols = [x[:, :, 1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    f = np.concatenate(cols, 1).transpose(0, 2, 3, 1).reshape(-1, 9 * c)
    return np.concatenate([f, np.ones((len(f), 1), f.dtype)], 1)


def _interior(x: np.ndarray) -> np.ndarray:
    return x[:, :, 1:-1, 1:-1].transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def vs_linear(predict_v, pack: dict, caption_emb: dict, n: int = 240, timesteps: Sequence[int] = (100, 200, 300, 500),
              seed: int = 0, res: int = 16, batch: int = 48) -> Dict:
    """x0 error (mean squared, standardised latents, interior cells) of predict_v(xt, t, spatial, cond) -> v on
    n AID crops of the pack's second half, beside per-element shrinkage and a 3 x 3 linear filter fitted on its
    first half; conditions drawn as in training (latent_data.LatentBatchMaker)."""
    from .data import Probabilities
    from .latent_data import LatentBatchMaker
    from .train import alphas_cumprod

    half = len(pack["aid_z"]) // 2
    if half < 1:
        raise ValueError("vs-linear needs at least 2 AID scenes in the pack")
    fit_pack = dict(pack, aid_z=pack["aid_z"][:half], aid_g=pack["aid_g"][:half], aid_labels=pack["aid_labels"][:half])
    test_pack = dict(pack, aid_z=pack["aid_z"][half:], aid_g=pack["aid_g"][half:],
                     aid_labels=pack["aid_labels"][half:])
    fit = LatentBatchMaker(fit_pack, caption_emb, seed=seed + 1, probs=Probabilities()).batch(n, res, "aid")
    b = LatentBatchMaker(test_pack, caption_emb, seed=seed, probs=Probabilities()).batch(n, res, "aid")
    x0, spatial, cond = (np.asarray(b[k], np.float32) for k in ("x0", "spatial", "cond"))
    fx0 = np.asarray(fit["x0"], np.float32)
    ac = alphas_cumprod().numpy().astype(np.float64)
    rng = np.random.default_rng(seed)
    noise, fnoise = rng.standard_normal(x0.shape).astype(np.float32), rng.standard_normal(fx0.shape).astype(np.float32)
    target = _interior(x0)
    rows = {}
    for t in timesteps:
        a, s = np.float32(np.sqrt(ac[int(t)])), np.float32(np.sqrt(1 - ac[int(t)]))
        xt = a * x0 + s * noise
        v = np.concatenate([predict_v(xt[i:i + batch], float(t), spatial[i:i + batch], cond[i:i + batch])
                            for i in range(0, len(xt), batch)])
        model = float(((_interior(a * xt - s * v) - target) ** 2).mean())
        shrink = float(((_interior(xt) * (a / (a * a + s * s)) - target) ** 2).mean())
        w = np.linalg.lstsq(_linear_features(a * fx0 + s * fnoise), _interior(fx0), rcond=None)[0]
        linear = float(((_linear_features(xt) @ w - target) ** 2).mean())
        rows[str(int(t))] = {"alpha_bar": float(ac[int(t)]), "model": model, "shrinkage": shrink,
                             "linear_3x3": linear, "gain_over_linear": 1 - model / linear}
    return {"crops": int(n), "latent_cells": int(res), "x0_error": rows}


def torch_predictor(checkpoint: str):
    """predict_v from a checkpoint's EMA weights (train.py, distill.py or progressive.py)."""
    import torch

    from .model import Denoiser, DenoiserConfig

    st = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = Denoiser(DenoiserConfig.from_dict(st["config"]))
    model.load_state_dict(st["ema"])
    model.eval()
    extra = 1 if model.cfg.guidance_input else 0

    def predict_v(xt, t, spatial, cond):
        c = np.concatenate([cond, np.ones((len(cond), extra), np.float32)], 1)
        with torch.no_grad():
            return model(torch.from_numpy(xt), torch.full((len(xt),), t), torch.from_numpy(spatial),
                         torch.from_numpy(c)).numpy()
    return predict_v, {"checkpoint": checkpoint, "step": int(st.get("step", -1))}


def onnx_predictor(path: str, threads: int = 0):
    """predict_v from a denoiser graph (a guidance-distilled one at guidance scale 1: its conditional prediction)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    dim = sess.get_inputs()[[i.name for i in sess.get_inputs()].index("cond")].shape[1]

    def predict_v(xt, t, spatial, cond):
        if dim not in (cond.shape[1], cond.shape[1] + 1):
            raise ValueError(f"{path}: the graph takes a condition vector of {dim}, the pack's conditions have "
                             f"{cond.shape[1]} (another text encoder's captions in the cache?)")
        c = np.concatenate([cond, np.ones((len(cond), 1), np.float32)], 1) if dim > cond.shape[1] else cond
        return sess.run(["prediction"], {"sample": xt, "timestep": np.full((len(xt),), t, np.float32),
                                         "spatial": spatial, "cond": c})[0]
    return predict_v, {"onnx": path}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("layout-use", help="x0 error with and without the layout")
    u.add_argument("--checkpoint", required=True)
    u.add_argument("--latents", required=True, help="latent pack with maps tiles (latent_data encode)")
    u.add_argument("--cache", default="runs/cache", help="folder with caption_emb.npz (train.py writes it)")
    u.add_argument("--n", type=int, default=64)
    u.add_argument("--timesteps", default="999,900,700,500")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--threads", type=int, default=0)
    u.add_argument("--out", default="", help="also write the figures to this JSON file")
    v = sub.add_parser("vs-linear", help="x0 error beside per-element shrinkage and a 3 x 3 linear filter")
    who = v.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint")
    who.add_argument("--onnx", help="a package's fp32 denoiser graph")
    v.add_argument("--latents", required=True, help="latent pack with AID scenes the model was not trained on")
    v.add_argument("--cache", default="runs/cache", help="folder with caption_emb.npz (train.py writes it)")
    v.add_argument("--n", type=int, default=240)
    v.add_argument("--timesteps", default="100,200,300,500,700")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--threads", type=int, default=0)
    v.add_argument("--out", default="", help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    import torch

    from .latent_data import load_pack
    from .train import caption_embeddings

    if a.threads:
        torch.set_num_threads(a.threads)
    pack = load_pack(a.latents)
    ts = [int(t) for t in a.timesteps.split(",")]
    if a.cmd == "layout-use":
        res = layout_use(a.checkpoint, pack, caption_embeddings(a.cache), a.n, ts, a.seed)
        res["pack"] = {"path": a.latents, **linear_layout_gain(pack)}
    else:
        pv, who = torch_predictor(a.checkpoint) if a.checkpoint else onnx_predictor(a.onnx, a.threads)
        res = {**who, "pack": a.latents,
               **vs_linear(pv, pack, caption_embeddings(a.cache), a.n, ts, a.seed,
                           res=min(16, pack["aid_z"].shape[-1]))}
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
