"""How much a latent checkpoint uses its layout: the x0 error of its prediction at a few noise levels, from the
same noisy latents, with the layout and with the layout taken away (as the unconditional branch takes it).

    python -m rsgen_qgis.training.diagnose layout-use --checkpoint runs/train-latent/last.pt \\
        --latents runs/latents/maps256.npz [--n 64] [--timesteps 999,900,700,500]

The layout decides where roads and houses go, and that is settled in the first, noisiest steps: a model that draws
a town from a layout predicts x0 markedly better with it there. Beside it, the gain a per-cell linear map from
the layout fractions to the latents gets over the pack's mean latent (what the layout can tell at the finest
scale without any context). Figures are means over the same noise for both rows, so they differ only by the
layout; rsgen-base-1's card records them per instalment.
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
    a = ap.parse_args(argv)
    import torch

    from .latent_data import load_pack
    from .train import caption_embeddings

    if a.threads:
        torch.set_num_threads(a.threads)
    pack = load_pack(a.latents)
    res = layout_use(a.checkpoint, pack, caption_embeddings(a.cache), a.n,
                     [int(t) for t in a.timesteps.split(",")], a.seed)
    res["pack"] = {"path": a.latents, **linear_layout_gain(pack)}
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
