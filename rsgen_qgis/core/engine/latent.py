"""Latent-space packages (kind "latent", made by `export-diffusers`): CLIP text encoder, UNet (+ControlNet),
VAE decoder, run with the numpy samplers, window by window, as diffusers' Stable Diffusion pipelines do.

Per step the latent canvas (the output grid padded to whole tiles, divided by the VAE factor) is cut into
overlapping UNet-sized windows; each batch of windows runs with its unconditional twins (classifier-free
guidance: uncond + g * (cond - uncond), the empty prompt as diffusers encodes it), the guided noise
predictions are fused with smooth weights and the sampler steps the whole canvas (samplers are elementwise,
core/engine/samplers.py). The VAE then decodes overlapping latent windows, blended in pixel space. With a canvas of
one tile this is exactly StableDiffusion(ControlNet)Pipeline's loop: tests/test_latent.py compares both.

Conditions: the prompt; DiffusionSat metadata from the grid (core/conditions/diffusionsat.py) when the UNet takes it;
the layout (drawn with the manifest's palette, values in [0, 1]) or the guide image as the ControlNet
conditioning image; a source image for variations (VAE encoder mean, noised to the strength's first
timestep, as img2img). Noise is world-anchored (core/tiling.world_noise on the latent grid).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import VERSION
from ..conditions import diffusionsat
from ..runtime.clip_tokenizer import CLIPTokenizer
from ..errors import Cancelled, ConditionError, ModelPackageError
from ..runtime.ortrun import Graph, host, session
from .samplers import Sampler, Schedule, make_sampler
from .tiling import batched, blend_weights, windows, world_noise

log = logging.getLogger("rsgen_qgis")
Progress = Callable[[float, str], None]


class ClipTextEncoder:
    """Prompt -> CLIP last hidden state [1, 77, D], as diffusers' encode_prompt makes it (cached)."""

    def __init__(self, graph: Graph, tokenizer: CLIPTokenizer, cache_size: int = 16) -> None:
        self.graph, self.tokenizer = graph, tokenizer
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    def embed(self, prompt: str) -> np.ndarray:
        with self._lock:
            if prompt in self._cache:
                self._cache.move_to_end(prompt)
                return self._cache[prompt]
        ids = self.tokenizer.encode([prompt])
        out = host(self.graph.run({"input_ids": ids}, ["last_hidden_state"])["last_hidden_state"])
        out = np.asarray(out, np.float32)
        with self._lock:
            self._cache[prompt] = out
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return out


def _tile_dims(m: dict) -> Dict[str, int]:
    f = int(m["latent"]["vae_scale_factor"])
    t = int(m["tile"]["size"]) // f
    return {"f": f, "tile": t}


def load_latent(pkg, chosen: Sequence[str], threads: int = 0, io_binding: Optional[bool] = None):
    """Open every graph of a verified latent package (fp16 UNet/ControlNet on a GPU when the package has them)."""
    from ..runtime import providers as prov
    from ..runtime.models import MAX_BATCH, LoadedModel, check_io

    m = pkg.manifest
    g = m["graphs"]
    d = _tile_dims(m)
    t, f = d["tile"], d["f"]
    seq = int(m["tokenizer"].get("max_length", 77))
    gpu = prov.is_gpu(chosen)
    dims = [{"batch": b, "height": t, "width": t, "sequence": seq, "image_height": t * f, "image_width": t * f}
            for b in (1, MAX_BATCH, MAX_BATCH)]
    graphs = {}
    for name in ("text_encoder", "unet", "controlnet", "vae_decoder", "vae_encoder"):
        if name not in g:
            continue
        spec = g[name]
        fname = spec["fp16_file"] if gpu and spec.get("fp16_file") else spec["file"]
        dm = dims if name != "text_encoder" else [{**x, "batch": 1} for x in dims]
        profile = prov.shape_profile(spec["inputs"], *dm)
        # the text encoder runs twice per request: a TensorRT engine would not pay for its build
        ch = [p for p in chosen if p != "TensorrtExecutionProvider"] if name == "text_encoder" else chosen
        sess = session(pkg.file(fname), ch or ["CPUExecutionProvider"], profile, threads)
        check_io(pkg, name, sess)
        graphs[name] = Graph(sess, io_binding)
    tk = m["tokenizer"]
    if tk.get("type") != "clip_bpe":
        raise ModelPackageError(f"{pkg.file('manifest.json')}: tokenizer type {tk.get('type')!r} is not "
                                "supported for latent models (clip_bpe).")
    try:
        tok = CLIPTokenizer(pkg.file(tk["vocab"]), pkg.file(tk["merges"]), max_length=seq, bos=tk["bos"],
                            eos=tk["eos"], pad=tk["pad"], unk=tk["unk"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelPackageError(f"{pkg.file(tk.get('vocab', 'vocab.json'))}: cannot load the CLIP tokenizer "
                                f"({exc}).") from exc
    text = ClipTextEncoder(graphs.pop("text_encoder"), tok)
    unet = graphs.pop("unet")
    variant = "fp16" if gpu and g["unet"].get("fp16_file") else "fp32"
    return LoadedModel(pkg, unet, text, unet.provider, extra=graphs, variant=variant)


def _zeros_residuals(spec: dict, n: int, h: int, w: int) -> Dict[str, np.ndarray]:
    """Zero ControlNet residuals (the UNet graph of a ControlNet package always takes them)."""
    from ..runtime.providers import resolve_dim

    out = {}
    for name, s in spec["inputs"].items():
        if name.startswith("down_res_") or name == "mid_res":
            dims = {"batch": n, "height": h, "width": w}
            out[name] = np.zeros([resolve_dim(d, dims) for d in s["shape"]], np.float32)
    return out


class LatentDenoiser:
    """Guided noise prediction for a whole latent canvas, windows batched and fused."""

    def __init__(self, model, cond: np.ndarray, uncond: Optional[np.ndarray], guidance: float,
                 metadata: Optional[np.ndarray] = None, control: Optional[np.ndarray] = None,
                 overlap: Optional[int] = None, batch: int = 4,
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        m = model.package.manifest
        d = _tile_dims(m)
        self.model, self.f, self.tile = model, d["f"], d["tile"]
        self.overlap = self.tile // 4 if overlap is None else overlap
        self.unet: Graph = model.denoiser
        self.cn: Optional[Graph] = model.extra.get("controlnet") if control is not None else None
        self.uspec = m["graphs"]["unet"]
        self.control_scale = float(m["conditions"].get("control", {}).get("scale", 1.0))
        self.guidance, self.batch, self.cancelled = float(guidance), int(batch), cancelled
        self.metadata, self.control = metadata, control
        self.cfg = uncond is not None
        self._ehs: Dict[int, object] = {}
        self._cond, self._uncond = cond, uncond

    def _embeddings(self, n: int):
        """[uncond x n, cond x n] (diffusers' order), uploaded once per batch size."""
        if n not in self._ehs:
            parts = ([np.repeat(self._uncond, n, 0)] if self.cfg else []) + [np.repeat(self._cond, n, 0)]
            self._ehs[n] = self.unet.to_device(np.concatenate(parts).astype(np.float32))
        return self._ehs[n]

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        c, h, w = x.shape
        acc = np.zeros((c, h, w), np.float64)
        wsum = np.zeros((h, w), np.float64)
        wins = windows(h, w, self.tile, self.overlap)
        weights: Dict[tuple, np.ndarray] = {}
        for group in batched(wins, self.batch):
            if self.cancelled():
                raise Cancelled("Generation cancelled; nothing was written.")
            xs = np.stack([x[:, r:r + hh, cc:cc + ww] for r, cc, hh, ww in group]).astype(np.float32)
            k = 2 if self.cfg else 1
            n = len(group) * k
            feeds = {"sample": np.concatenate([xs] * k), "timestep": np.full((n,), t, np.float32),
                     "encoder_hidden_states": self._embeddings(len(group))}
            if self.metadata is not None:
                feeds["metadata"] = np.repeat(self.metadata[None].astype(np.float32), n, 0)
            hh, ww = group[0][2], group[0][3]
            if self.cn is not None:
                f = self.f
                cond_img = np.stack([self.control[:, r * f:(r + a) * f, cc * f:(cc + b) * f]
                                     for r, cc, a, b in group]).astype(np.float32)
                cfeeds = {kk: v for kk, v in dict(feeds, controlnet_cond=np.concatenate([cond_img] * k)).items()
                          if kk in self.cn.inputs}
                names = [o for o in self.cn.outputs]
                res = self.cn.run(cfeeds, names, keep=names if self.control_scale == 1.0 else ())
                if self.control_scale != 1.0:
                    res = {kk: host(v) * np.float32(self.control_scale) for kk, v in res.items()}
                feeds.update(res)
            elif any(nm.startswith("down_res_") for nm in self.uspec["inputs"]):
                feeds.update(_zeros_residuals(self.uspec, n, hh, ww))
            out = host(self.unet.run(feeds, ["noise_pred"])["noise_pred"])
            if self.cfg:
                u, cpred = out[:len(group)], out[len(group):]
                out = u + np.float32(self.guidance) * (cpred - u)
            for (r, cc, a, b), o in zip(group, out):
                wt = weights.setdefault((a, b), blend_weights(a, b, self.overlap))
                acc[:, r:r + a, cc:cc + b] += o * wt
                wsum[r:r + a, cc:cc + b] += wt
        return (acc / wsum).astype(np.float32)


def denoise(denoiser: LatentDenoiser, sampler: Sampler, x: np.ndarray,
            progress: Optional[Progress] = None, span: float = 0.9) -> np.ndarray:
    """Run the sampler from x (already scaled by init_noise_sigma) to the clean latent canvas."""
    n = len(sampler.timesteps)
    for i, t in enumerate(sampler.timesteps):
        if denoiser.cancelled():
            raise Cancelled("Generation cancelled; nothing was written.")
        pred = denoiser(sampler.scale_model_input(x, i).astype(np.float32), float(t))
        x = sampler.step(pred, i, x).astype(np.float32)
        if progress:
            progress((i + 1) / n * span, f"Step {i + 1}/{n}")
    return x


def decode(model, latents: np.ndarray, overlap: Optional[int] = None, batch: int = 2) -> np.ndarray:
    """(C, h, w) latents -> (3, h*f, w*f) image in [-1, 1] (unclipped), VAE windows blended in pixel space."""
    m = model.package.manifest
    lat = m["latent"]
    d = _tile_dims(m)
    f, tile = d["f"], d["tile"]
    ov = tile // 4 if overlap is None else overlap
    z = latents / np.float32(lat["scaling_factor"]) + np.float32(lat.get("shift_factor", 0.0))
    vae: Graph = model.extra["vae_decoder"]
    c, h, w = z.shape
    acc = np.zeros((3, h * f, w * f), np.float64)
    wsum = np.zeros((h * f, w * f), np.float64)
    for group in batched(windows(h, w, tile, ov), batch):
        zs = np.stack([z[:, r:r + a, cc:cc + b] for r, cc, a, b in group]).astype(np.float32)
        imgs = host(vae.run({"latent": zs}, ["image"])["image"])
        for (r, cc, a, b), im in zip(group, imgs):
            wt = blend_weights(a * f, b * f, ov * f)
            acc[:, r * f:(r + a) * f, cc * f:(cc + b) * f] += im * wt
            wsum[r * f:(r + a) * f, cc * f:(cc + b) * f] += wt
    return (acc / wsum).astype(np.float32)


def encode(model, image: np.ndarray, overlap: Optional[int] = None, batch: int = 2) -> np.ndarray:
    """(3, H, W) image in [-1, 1] (H, W multiples of the VAE factor) -> (C, H/f, W/f) scaled latents: the VAE
    encoder's mean (diffusers' img2img with sample_mode='argmax'), windows blended in latent space."""
    m = model.package.manifest
    lat = m["latent"]
    vae: Optional[Graph] = model.extra.get("vae_encoder")
    if vae is None:
        raise ConditionError(f"Model {model.package.id!r} has no VAE encoder graph, so it cannot start from an "
                             "image; export it again with this version of export-diffusers.")
    d = _tile_dims(m)
    f, tile = d["f"], d["tile"]
    ov = tile // 4 if overlap is None else overlap
    _, H, W = image.shape
    h, w = H // f, W // f
    acc = np.zeros((int(lat["channels"]), h, w), np.float64)
    wsum = np.zeros((h, w), np.float64)
    for group in batched(windows(h, w, tile, ov), batch):
        xs = np.stack([image[:, r * f:(r + a) * f, cc * f:(cc + b) * f] for r, cc, a, b in group]).astype(np.float32)
        zs = host(vae.run({"image": xs}, ["latent_mean"])["latent_mean"])
        for (r, cc, a, b), z in zip(group, zs):
            wt = blend_weights(a, b, ov)
            acc[:, r:r + a, cc:cc + b] += z * wt
            wsum[r:r + a, cc:cc + b] += wt
    z = (acc / wsum).astype(np.float32)
    return (z - np.float32(lat.get("shift_factor", 0.0))) * np.float32(lat["scaling_factor"])


def _canvas(n: int, tile: int, multiple: int) -> int:
    return -(-max(n, tile) // multiple) * multiple


def _pad_edge(a: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, h - a.shape[-2]), (0, w - a.shape[-1])], mode="edge")


def control_image(m: dict, req, grid, hc: int, wc: int) -> Optional[np.ndarray]:
    """The ControlNet conditioning image (3, Hc, Wc) in [0, 1] from the layout or the guide, or None."""
    from ..conditions.encoding import NO_LAYOUT, guide_upsample

    c = req.conditions
    spec = m["conditions"].get("control")
    if spec is None:
        if c.layout is not None or c.guide is not None:
            raise ConditionError(f"Model {m['id']!r} has no ControlNet: it takes neither a layout nor a guide "
                                 "image; leave them out.")
        return None
    src = spec.get("source", "layout")
    other = "guide" if src == "layout" else "layout"
    if getattr(c, other) is not None:
        raise ConditionError(f"Model {m['id']!r}'s ControlNet is conditioned on the {src}, not on the {other}.")
    if src == "layout" and c.layout is not None:
        ids = np.asarray(c.layout)
        if ids.shape != (grid.height, grid.width):
            raise ConditionError(f"The layout is {ids.shape[1]}x{ids.shape[0]} pixels but the output grid is "
                                 f"{grid.width}x{grid.height}; it must be made on the request's grid.")
        pal = np.asarray(spec["palette"], np.float32)
        bad = (ids >= len(pal)) & (ids != NO_LAYOUT)
        if bad.any():
            raise ConditionError(f"Layout contains class ids {sorted(set(ids[bad].tolist()))[:5]} but the model "
                                 f"knows {len(pal)} classes.")
        img = pal[np.where(ids == NO_LAYOUT, 0, ids)].transpose(2, 0, 1)
        return _pad_edge(img, hc, wc)
    if src == "guide" and c.guide is not None:
        g = np.asarray(c.guide, np.float32) / 255.0
        return _pad_edge(guide_upsample(g, (grid.height, grid.width)), hc, wc)
    return None


def generate_latent(req, model, grid, progress: Progress, cancelled: Callable[[], bool], window_batch: int,
                    t0: float):
    """The latent-kind body of core.pipeline.generate: same grid, noise anchoring, tags and atomic COG write."""
    from ..geo.georef import centre_lonlat, gsd_metres_mean
    from ..geo.geotiff import write_cog
    from .pipeline import GenerationResult

    m = model.package.manifest
    c = req.conditions
    if c.mask is not None:
        raise ConditionError(f"Model {model.package.id!r} (converted diffusers pipeline) does not do inpainting; "
                             "leave the mask out (a source image alone makes a variation).")
    d = _tile_dims(m)
    f, tile_px, mult = d["f"], int(m["tile"]["size"]), int(m["tile"].get("multiple", d["f"]))
    hc, wc = _canvas(grid.height, tile_px, mult), _canvas(grid.width, tile_px, mult)
    control = control_image(m, req, grid, hc, wc)
    warnings: List[str] = []
    lon, lat = centre_lonlat(grid)
    gsd = gsd_metres_mean(grid)
    meta = None
    if "metadata" in m["conditions"]:
        meta = diffusionsat.from_manifest(m["conditions"]["metadata"], lon, lat, gsd, req.date, warnings)
    strength = c.strength if c.image is not None else 1.0
    sampler = make_sampler(req.sampler, Schedule.from_config(m["scheduler"]), req.steps, strength)
    cond = model.text_encoder.embed(req.prompt.strip())
    uncond = model.text_encoder.embed("") if req.guidance > 1.0 else None
    col0, row0 = grid.world_offset
    ch = int(m["latent"]["channels"])
    noise = world_noise(req.seed, col0 // f, row0 // f, hc // f, wc // f, ch)
    sampler.with_step_noise(lambda i: world_noise(req.seed, col0 // f, row0 // f, hc // f, wc // f, ch, stream=i + 1))
    if c.image is not None:  # variation: the source image's latents noised to the first kept timestep
        src = np.asarray(c.image)
        if src.shape != (3, grid.height, grid.width):
            raise ConditionError(f"The source image is {src.shape[-1]}x{src.shape[-2]} pixels but the output grid "
                                 f"is {grid.width}x{grid.height}; it must be made on the request's grid.")
        with model.lock:
            z0 = encode(model, _pad_edge(src.astype(np.float32) / 127.5 - 1.0, hc, wc))
        x = sampler.add_noise(z0, noise, sampler.start_timestep)
    else:
        x = noise * np.float32(sampler.init_noise_sigma)
    from ..runtime.models import MAX_BATCH

    # a batch of windows runs with its guidance twins: stay inside the TensorRT profile (MAX_BATCH)
    batch = max(1, min(window_batch, MAX_BATCH) // 2)
    den = LatentDenoiser(model, cond, uncond, req.guidance, meta, control, batch=batch, cancelled=cancelled)
    with model.lock:
        z = denoise(den, sampler, x.astype(np.float32), progress, 0.9)
        progress(0.92, "Decoding")
        img = decode(model, z)
    if cancelled():
        raise Cancelled("Generation cancelled; nothing was written.")
    img = np.clip(img[:, :grid.height, :grid.width], -1, 1)
    rgb = np.round((img + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    used = {"gsd_m": gsd, "lon": lon, "lat": lat, "date": req.date}
    tags = {
        "prompt": req.prompt, "seed": req.seed, "model_id": model.package.id,
        "model_sha256": model.package.denoiser_sha256, "sampler": req.sampler, "steps": req.steps,
        "guidance": req.guidance, "software": f"rsgen_qgis {VERSION}", "synthetic": "true",
        "provider": model.provider, "request": req.to_json(),
        "metadata_used": ({k: ("unknown" if v is None else v) for k, v in used.items()} if meta is not None
                          else "none (the model takes no metadata)"),
    }
    progress(0.98, "Writing GeoTIFF")
    path = write_cog(req.output, rgb, grid, tags)
    for w in warnings:
        log.warning(w)
    progress(1.0, "Done")
    return GenerationResult(path, grid, model.provider, time.time() - t0, model.package.id, warnings,
                            denoiser_graph=model.variant)
