"""Converted diffusers pipelines (kind "latent" with a UNet, made by `export-diffusers`): their CLIP text encoder,
UNet (+ ControlNet) and VAE graphs opened as one loaded model. They are sampled by the same engine as every
other package (core.engine: windows, blocks, inpainting, variation); their VAE is the model's autoencoder
(core.runtime.autoencoder.diffusers_autoencoder) and their UNet is called through core.engine.predictors.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import numpy as np

from .clip_tokenizer import CLIPTokenizer
from .ortrun import Graph, host, session
from ..errors import ModelPackageError


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


def load_diffusers(pkg, chosen: Sequence[str], threads: int = 0, io_binding: Optional[bool] = None):
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
