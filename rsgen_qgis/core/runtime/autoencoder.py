"""Autoencoders: the edges of the one sampling engine (core.engine). The engine samples on a latent grid; an
autoencoder maps images to that grid (encode: inpainting's known pixels, variation's source, guides) and back
(decode: every result).

Three kinds, one interface (factor, channels, encode, decode):
- Identity: a pixel-space package is a latent package whose autoencoder is the identity with factor 1 and 3
  channels; encode/decode return their input, so pixel models run the same code bit for bit as before.
- An autoencoder package (kind "autoencoder", e.g. models/taef2): ONNX encoder/decoder graphs, the factor, the
  channel count, the image range the graphs expect, and per-channel latent statistics. A model package names it
  ("autoencoder": {"package": id, "factor", "channels", "decoder_sha256"}); two models may share one.
- A converted diffusers pipeline's own VAE graphs (vae_decoder, vae_encoder) with its scaling/shift factors.

Latents the denoiser sees are standardised: z = (raw - shift) / scale per channel. Images are (3, H, W) in
[-1, 1] on both sides of the interface, whatever range the graphs use.

Windows: decoders with whole-tile statistics (TAEF2's GroupNorm pooling) shift pixels near a cut by a few grey
levels, so a canvas is decoded in overlapping latent windows blended with smooth weights in pixel space; each
window is a pure function of its latents, so the same latents decode to the same pixels whatever the canvas
they belong to (the large-area path relies on this). Encoding is windowed the same way, blended on the latent
grid.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import ConditionError, ModelPackageError
from ..engine.tiling import batched, blend_weights, windows


# The largest canvas (latent cells a side) an autoencoder package's decoder takes in one piece when asked to decode
# whole: 64 cells = 512 px for a factor of 8, so a latent large-area block at its default footprint (58 cells,
# block_windows 1) decodes at once; larger footprints keep windows, bounding the decoder's activations (TAEF2's
# widest layer, 64 channels at full resolution: 67 MB at 512 px). A converted pipeline's VAE (hundreds of channels)
# keeps windows of one tile.
WHOLE_MAX_CELLS = 64


class Identity:
    """The pixel-space autoencoder: factor 1, RGB channels, encode/decode return their input."""
    factor = 1
    channels = 3
    name = "identity"
    can_encode = True

    def encode(self, image: np.ndarray) -> np.ndarray:
        return image

    def decode(self, latents: np.ndarray, whole: bool = False) -> np.ndarray:
        return latents

    def describe(self) -> str:
        return "none (pixel space)"


@dataclass
class AEGraphs:
    """Where an autoencoder's graphs are and how to talk to them (from a manifest)."""
    decoder: object               # ortrun.Graph
    encoder: Optional[object]     # ortrun.Graph or None (decode-only)
    dec_in: str
    dec_out: str
    enc_in: str
    enc_out: str


class GraphAutoencoder:
    """ONNX encoder/decoder with standardised latents, run in overlapping windows (see the module doc)."""

    def __init__(self, name: str, graphs: AEGraphs, factor: int, channels: int, image_range: Sequence[float],
                 shift: Sequence[float], scale: Sequence[float], latent_tile: int, latent_overlap: int,
                 batch: int = 2, sha256: str = "", whole_max: int = 0, variant: str = "fp32",
                 variant_sha256: str = "") -> None:
        if factor < 1 or channels < 1:
            raise ModelPackageError(f"Autoencoder {name!r}: factor and channels must be positive.")
        if len(shift) != channels or len(scale) != channels or not all(float(s) > 0 for s in scale):
            raise ModelPackageError(f"Autoencoder {name!r}: latent shift/scale must have {channels} values "
                                    "(scales positive).")
        if not 0 <= latent_overlap < latent_tile:
            raise ModelPackageError(f"Autoencoder {name!r}: window overlap must be smaller than the window.")
        self.name, self.g, self.factor, self.channels = name, graphs, int(factor), int(channels)
        lo, hi = (float(v) for v in image_range)
        self._img_scale, self._img_shift = (hi - lo) / 2.0, (hi + lo) / 2.0  # [-1, 1] -> graph range
        self.shift = np.asarray(shift, np.float32).reshape(-1, 1, 1)
        self.scale = np.asarray(scale, np.float32).reshape(-1, 1, 1)
        self.tile, self.overlap, self.batch = int(latent_tile), int(latent_overlap), int(batch)
        self.whole_max = max(int(whole_max), self.tile)
        self.sha256 = sha256
        # the decoder graph that runs: fp32 (the one the model pins), fp16 (GPU) or int8 (CPU, precision auto)
        self.variant, self.variant_sha256 = variant, variant_sha256 or sha256
        self.lock = threading.Lock()

    @property
    def can_encode(self) -> bool:
        return self.g.encoder is not None

    def describe(self) -> str:
        return f"{self.name} (factor {self.factor}, {self.channels} channels)"

    def decode(self, latents: np.ndarray, whole: bool = False) -> np.ndarray:
        """(C, h, w) standardised latents -> (3, h*f, w*f) image in [-1, 1] (unclipped).
        whole: decode the canvas in one piece where it is at most whole_max cells a side (the large-area path, for
        a block: one window of 58 x 58 cells costs 2.7x less than the four overlapping 48-cell windows that cover
        it, and is what decoding the latents at once gives); else, and by default, in overlapping windows."""
        from .ortrun import host

        c, h, w = latents.shape
        if c != self.channels:
            raise ConditionError(f"Autoencoder {self.name!r} decodes {self.channels}-channel latents, got {c}.")
        f, ov = self.factor, self.overlap
        tile = max(h, w) if whole and max(h, w) <= self.whole_max else self.tile
        raw = latents.astype(np.float32) * self.scale + self.shift
        acc = np.zeros((3, h * f, w * f), np.float64)
        wsum = np.zeros((h * f, w * f), np.float64)
        weights: Dict[tuple, np.ndarray] = {}
        for group in batched(windows(h, w, tile, ov), self.batch):
            zs = np.stack([raw[:, r:r + a, cc:cc + b] for r, cc, a, b in group])
            with self.lock:
                imgs = host(self.g.decoder.run({self.g.dec_in: zs}, [self.g.dec_out])[self.g.dec_out])
            for (r, cc, a, b), im in zip(group, imgs):
                wt = weights.setdefault((a, b), blend_weights(a * f, b * f, ov * f))
                acc[:, r * f:(r + a) * f, cc * f:(cc + b) * f] += im * wt
                wsum[r * f:(r + a) * f, cc * f:(cc + b) * f] += wt
        img = (acc / wsum).astype(np.float32)
        return (img - np.float32(self._img_shift)) / np.float32(self._img_scale)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """(3, H, W) image in [-1, 1] (H, W multiples of the factor) -> (C, H/f, W/f) standardised latents."""
        from .ortrun import host

        if self.g.encoder is None:
            raise ConditionError(f"Autoencoder {self.name!r} has no encoder graph, so this model cannot start from "
                                 "an image: inpainting, variation and guide images need one.")
        f, ov = self.factor, self.overlap
        _, H, W = image.shape
        if H % f or W % f:
            raise ConditionError(f"Image {W}x{H} is not a multiple of the autoencoder's factor {f}.")
        h, w = H // f, W // f
        x = image.astype(np.float32) * np.float32(self._img_scale) + np.float32(self._img_shift)
        acc = np.zeros((self.channels, h, w), np.float64)
        wsum = np.zeros((h, w), np.float64)
        weights: Dict[tuple, np.ndarray] = {}
        for group in batched(windows(h, w, self.tile, ov), self.batch):
            xs = np.stack([x[:, r * f:(r + a) * f, cc * f:(cc + b) * f] for r, cc, a, b in group])
            with self.lock:
                zs = host(self.g.encoder.run({self.g.enc_in: xs}, [self.g.enc_out])[self.g.enc_out])
            for (r, cc, a, b), z in zip(group, zs):
                wt = weights.setdefault((a, b), blend_weights(a, b, ov))
                acc[:, r:r + a, cc:cc + b] += z * wt
                wsum[r:r + a, cc:cc + b] += wt
        z = (acc / wsum).astype(np.float32)
        return (z - self.shift) / self.scale


def _graph(path: str, chosen: Sequence[str], threads: int, io: tuple, owner: str):
    """An ONNX session for one autoencoder graph; its input/output names are checked against the manifest."""
    from .ortrun import Graph, session

    sess = session(path, list(chosen), None, threads)
    ins, outs = {i.name for i in sess.get_inputs()}, {o.name for o in sess.get_outputs()}
    if io[0] not in ins or io[1] not in outs:
        raise ModelPackageError(f"{path}: the {owner} graph must take {io[0]!r} and give {io[1]!r} (it has "
                                f"{sorted(ins)} -> {sorted(outs)}).")
    return Graph(sess)


def _check_channels(path: str, sess_graph, name: str, axis: int, want: int) -> None:
    """The graph's declared channel dimension (when static) must be the autoencoder's."""
    for a in list(sess_graph.session.get_inputs()) + list(sess_graph.session.get_outputs()):
        if a.name == name and len(a.shape) == 4 and isinstance(a.shape[axis], int) and a.shape[axis] != want:
            raise ModelPackageError(f"{path}: {name!r} has {a.shape[axis]} channels, the manifest says {want}.")


def open_package_autoencoder(ae_pkg, chosen: Sequence[str], threads: int = 0,
                             want: Optional[dict] = None, precision: str = "fp32") -> GraphAutoencoder:
    """Open a verified autoencoder package. want: the model's "autoencoder" entry (factor, channels,
    decoder_sha256), checked against the package so a mismatched autoencoder is refused naming its files.
    precision "auto": the decoder's fp16 graph on a GPU and its int8 graph on the CPU where the package has them
    (training/quantize.py --autoencoder); "fp32" (the default here, and the encoder always on the CPU): the exact
    graphs."""
    m = ae_pkg.manifest
    mpath = ae_pkg.file("manifest.json")
    spec = m.get("autoencoder")
    if not isinstance(spec, dict):
        raise ModelPackageError(f"{mpath}: an autoencoder package needs an 'autoencoder' section.")
    try:
        factor, channels = int(spec["factor"]), int(spec["channels"])
        dec, enc = spec["decoder"], spec.get("encoder")
        stats = spec.get("latent_stats") or {}
        shift = stats.get("shift", [0.0] * channels)
        scale = stats.get("scale", [1.0] * channels)
        win = spec.get("window") or {}
        tile, overlap = int(win.get("latent_tile", 32)), int(win.get("latent_overlap", 8))
        rng = spec.get("image_range", [0.0, 1.0])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelPackageError(f"{mpath}: the autoencoder section is incomplete ({exc}).") from exc
    for part in [dec] + ([enc] if enc else []):
        if part.get("file") not in m.get("files", {}):
            raise ModelPackageError(f"{ae_pkg.file(str(part.get('file')))}: autoencoder graph not listed under the "
                                    "manifest's files.")
    if want is not None:
        wf, wc = int(want.get("factor", factor)), int(want.get("channels", channels))
        if (wf, wc) != (factor, channels):
            raise ModelPackageError(f"{ae_pkg.file(dec['file'])}: autoencoder {ae_pkg.id!r} has factor {factor} and "
                                    f"{channels} channels; the model needs factor {wf} and {wc} channels.")
        sha = want.get("decoder_sha256")
        if sha and m["files"][dec["file"]].get("sha256") != sha:
            raise ModelPackageError(f"{ae_pkg.file(dec['file'])}: this is not the decoder the model was trained "
                                    f"with (sha256 differs from the model's 'decoder_sha256').")
    gpu = any(p != "CPUExecutionProvider" for p in chosen[:1])
    pick = lambda part: part.get("fp16_file") if gpu and part.get("fp16_file") else part["file"]  # noqa: E731
    dec_file, variant = pick(dec), "fp16" if gpu and dec.get("fp16_file") else "fp32"
    if precision == "auto" and not gpu and dec.get("int8_file"):
        dec_file, variant = dec["int8_file"], "int8"
    if dec_file not in m.get("files", {}):
        raise ModelPackageError(f"{ae_pkg.file(str(dec_file))}: autoencoder graph not listed under the manifest's "
                                "files.")
    dio = (dec.get("input", "latent"), dec.get("output", "image"))
    decoder = _graph(ae_pkg.file(dec_file), chosen, threads, dio, "decoder")
    _check_channels(ae_pkg.file(dec_file), decoder, dio[0], 1, channels)
    encoder, eio = None, ("image", "latent")
    if enc:
        eio = (enc.get("input", "image"), enc.get("output", "latent"))
        encoder = _graph(ae_pkg.file(pick(enc)), chosen, threads, eio, "encoder")
        _check_channels(ae_pkg.file(pick(enc)), encoder, eio[1], 1, channels)
    graphs = AEGraphs(decoder, encoder, dio[0], dio[1], eio[0], eio[1])
    return GraphAutoencoder(ae_pkg.id, graphs, factor, channels, rng, shift, scale, tile, overlap,
                            sha256=m["files"][dec["file"]].get("sha256", ""), whole_max=WHOLE_MAX_CELLS,
                            variant=variant, variant_sha256=m["files"][dec_file].get("sha256", ""))


def diffusers_autoencoder(pkg, graphs: dict) -> GraphAutoencoder:
    """A converted diffusers pipeline's VAE (graphs vae_decoder, optional vae_encoder) as an autoencoder:
    diffusers scales latents as (raw - shift_factor) * scaling_factor, i.e. shift = shift_factor,
    scale = 1 / scaling_factor for every channel; its images are in [-1, 1]; windows of one UNet tile."""
    m = pkg.manifest
    lat = m["latent"]
    f = int(lat["vae_scale_factor"])
    ch = int(lat["channels"])
    tile = int(m["tile"]["size"]) // f
    sf, sh = float(lat["scaling_factor"]), float(lat.get("shift_factor", 0.0) or 0.0)
    g = AEGraphs(graphs["vae_decoder"], graphs.get("vae_encoder"), "latent", "image", "image", "latent_mean")
    return GraphAutoencoder(f"{pkg.id} VAE", g, f, ch, (-1.0, 1.0), [sh] * ch, [1.0 / sf] * ch, tile, tile // 4,
                            sha256=m["files"][m["graphs"]["vae_decoder"]["file"]].get("sha256", ""))
