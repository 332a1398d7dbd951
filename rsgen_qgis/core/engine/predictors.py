"""One batch of latent windows through a denoiser, with classifier-free guidance: the only place that knows a
denoiser's interface. The sampling loop (core.engine.loop) cuts windows, fuses and steps; it calls
`predict(model, p, xs, t, group)` and gets the guided prediction for each window.

Two interfaces:
- rsgen (our packages, pixel or latent): inputs sample, timestep, spatial (condition channels), cond (global
  vector); the unconditional twin drops the prompt/layout as the manifest says (core.conditions.encoding).
- diffusers (converted Stable Diffusion pipelines): sample, timestep, encoder_hidden_states, optional
  DiffusionSat metadata and ControlNet residuals; the guidance twins are [uncond, cond] in diffusers' order.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from . import autoguide
from .prepare import Prepared

Window = Tuple[int, int, int, int]


def evaluations(model, p: Prepared) -> int:
    """Denoiser evaluations per window and step (2 with classifier-free guidance, one more with autoguidance)."""
    if model.interface == "rsgen":
        return (2 if p.uncond is not None else 1) + (1 if p.autoguidance > 1.0 else 0)
    return 2 if p.text_uncond is not None else 1


def predict(model, p: Prepared, xs: np.ndarray, t: float, guidance: float, group: List[Window]) -> np.ndarray:
    if model.interface == "rsgen":
        return _rsgen(model, p, xs, t, guidance, group)
    return _diffusers(model, p, xs, t, guidance, group)


def _rsgen(model, p: Prepared, xs: np.ndarray, t: float, guidance: float, group: List[Window]) -> np.ndarray:
    sp = np.stack([p.spatial[:, r:r + h, c:c + w] for r, c, h, w in group])
    conds = np.repeat(p.cond, len(group), 0)
    guided = p.uncond is not None and guidance != 1.0  # at scale 1 the guided prediction is the conditional one
    if guided:
        sp_u = sp
        if p.uncond_zero is not None:
            o, n = p.uncond_zero
            sp_u = sp.copy()
            sp_u[:, o:o + n] = 0.0
        xs, sp = np.concatenate([xs, xs]), np.concatenate([sp, sp_u])
        conds = np.concatenate([conds, np.repeat(p.uncond, len(group), 0)])
    ts = np.full((len(xs),), t, np.float32)
    xs = xs.astype(np.float32)
    with model.lock:
        out = model.denoiser.run(["prediction"], {"sample": xs, "timestep": ts, "spatial": sp, "cond": conds})[0]
    cpred = out[:len(group)]
    if guided:
        out = out[len(group):] + guidance * (cpred - out[len(group):])
    if p.autoguidance > 1.0:
        n = len(group)
        out = autoguide.apply(model, p.autoguidance, out, cpred,
                              {"sample": xs[:n], "timestep": ts[:n], "spatial": sp[:n], "cond": conds[:n]})
    return out


def _zeros_residuals(spec: dict, n: int, h: int, w: int) -> Dict[str, np.ndarray]:
    """Zero ControlNet residuals (the UNet graph of a ControlNet package always takes them)."""
    from ..runtime.providers import resolve_dim

    out = {}
    for name, s in spec["inputs"].items():
        if name.startswith("down_res_") or name == "mid_res":
            dims = {"batch": n, "height": h, "width": w}
            out[name] = np.zeros([resolve_dim(d, dims) for d in s["shape"]], np.float32)
    return out


def _embeddings(model, p: Prepared, n: int):
    """[uncond x n, cond x n] (diffusers' order), uploaded once per batch size and footprint."""
    cache = p.extra.setdefault("_ehs", {})
    if n not in cache:
        parts = ([np.repeat(p.text_uncond, n, 0)] if p.text_uncond is not None else []) + [np.repeat(p.text, n, 0)]
        cache[n] = model.denoiser.to_device(np.concatenate(parts).astype(np.float32))
    return cache[n]


def _diffusers(model, p: Prepared, xs: np.ndarray, t: float, guidance: float, group: List[Window]) -> np.ndarray:
    from ..runtime.ortrun import host

    m = model.package.manifest
    unet = model.denoiser
    uspec = m["graphs"]["unet"]
    k = 2 if p.text_uncond is not None else 1
    n = len(group) * k
    xs = xs.astype(np.float32)
    feeds = {"sample": np.concatenate([xs] * k), "timestep": np.full((n,), t, np.float32),
             "encoder_hidden_states": _embeddings(model, p, len(group))}
    if p.dmeta is not None:
        feeds["metadata"] = np.repeat(p.dmeta[None].astype(np.float32), n, 0)
    hh, ww = group[0][2], group[0][3]
    cn = model.extra.get("controlnet") if p.control is not None else None
    if cn is not None:
        f = p.factor
        scale = float(m["conditions"].get("control", {}).get("scale", 1.0))
        img = np.stack([p.control[:, r * f:(r + a) * f, c * f:(c + b) * f] for r, c, a, b in group]).astype(np.float32)
        cfeeds = {kk: v for kk, v in dict(feeds, controlnet_cond=np.concatenate([img] * k)).items() if kk in cn.inputs}
        names = list(cn.outputs)
        res = cn.run(cfeeds, names, keep=names if scale == 1.0 else ())
        if scale != 1.0:
            res = {kk: host(v) * np.float32(scale) for kk, v in res.items()}
        feeds.update(res)
    elif any(nm.startswith("down_res_") for nm in uspec["inputs"]):
        feeds.update(_zeros_residuals(uspec, n, hh, ww))
    with model.lock:
        out = host(unet.run(feeds, ["noise_pred"])["noise_pred"])
    if k == 2:
        u, c = out[:len(group)], out[len(group):]
        out = u + np.float32(guidance) * (c - u)
    return out
