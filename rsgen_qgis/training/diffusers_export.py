"""Convert a local diffusers Stable Diffusion pipeline folder into an rsgen model package (kind "latent").

    python -m rsgen_qgis export-diffusers PATH --out models/NAME [--fp16] [--id ID] [--control layout]

Graphs: CLIP text encoder (input_ids -> last_hidden_state), UNet (sample, timestep, encoder_hidden_states
[, metadata][, ControlNet residuals] -> noise_pred), ControlNet when the folder has one, VAE decoder
(latent / scaling_factor -> image in [-1, 1]) and VAE encoder (image -> latent mean, for variations).
The package also holds the tokenizer's vocab.json + merges.txt (read by
core/runtime/clip_tokenizer.py at run time), the scheduler's noise schedule, the VAE's latent scaling factor and the
condition encodings. Weights load with use_safetensors=True after diffusers_inspect has refused pickle-only
parts: nothing is ever unpickled.

DiffusionSat's SatUNet (a UNet2DConditionModel plus `metadata_embedding`, one TimestepEmbedding per metadata
field applied to the sinusoidal projection of the field, summed into the time embedding; its ControlNet has
the same) is rebuilt from its config and safetensors as the diffusers class whose class embedding is that
sum, so the graph takes a `metadata` [B, 7] input encoded as core/conditions/diffusionsat.py says.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict, List, Optional

import torch
from torch import nn

from ..core.conditions import diffusionsat
from ..core.conditions.encoding import LAYOUT_CLASSES
from .diffusers_inspect import (DiffusersFolderError, inspect, scheduler_config, special_tokens,
                                tokenizer_tables)
from .export import FORMAT, sha256_file

OPSET = 17
EXTERNAL_DATA_OVER = 1_900_000_000  # bytes: bigger graphs keep their weights in one NAME.onnx.data file
# Colours a layout class is drawn with for a ControlNet whose conditioning image is a map (values in [0, 1]).
DEFAULT_PALETTE = {"background": [0.95, 0.94, 0.91], "road": [1.0, 1.0, 1.0], "major_road": [0.99, 0.84, 0.63],
                   "building": [0.85, 0.82, 0.79], "vegetation": [0.80, 0.92, 0.76], "water": [0.67, 0.83, 0.87]}


class MetadataEmbedding(nn.Module):
    """DiffusionSat's metadata embedding as a class embedding: sum_i emb_i(time_proj(md[:, i]))."""

    def __init__(self, time_proj: nn.Module, embeddings: nn.ModuleList) -> None:
        super().__init__()
        self.time_proj = time_proj
        self.embeddings = embeddings

    def forward(self, md: torch.Tensor) -> torch.Tensor:
        b, n = md.shape
        p = self.time_proj(md.reshape(-1)).reshape(b, n, -1).to(self.embeddings[0].linear_1.weight.dtype)
        out = self.embeddings[0](p[:, 0])
        for i in range(1, n):
            out = out + self.embeddings[i](p[:, i])
        return out


def _load_state(folder: str, part: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    d = os.path.join(folder, part)
    state: Dict[str, torch.Tensor] = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            state.update(load_file(os.path.join(d, f)))
    return state


def _uses_metadata(part: str, cfg: dict) -> bool:
    """DiffusionSat's SatUNet (use_metadata defaults to true there) or a ControlNet saved with use_metadata."""
    if part == "unet" and cfg.get("_class_name") == "SatUNet":
        return bool(cfg.get("use_metadata", True))
    return bool(cfg.get("use_metadata", False))


def _load_model(info: dict, part: str, cls):
    """A diffusers model from safetensors only, and its number of DiffusionSat metadata fields (0 when none).

    DiffusionSat's SatUNet and metadata ControlNet are the diffusers classes plus `metadata_embedding` (config
    `use_metadata`, `num_metadata`): rebuilt from the plain config with that embedding as the class embedding,
    so no weight of the checkpoint is silently dropped."""
    folder, cfg = info["folder"], dict(info["config"][part])
    if not _uses_metadata(part, cfg):
        m = cls.from_pretrained(folder, subfolder=part, use_safetensors=True, variant=info["weights"][part]["variant"])
        return m.eval(), 0
    n = int(cfg.get("num_metadata", 7))
    plain = {k: v for k, v in cfg.items() if k not in ("use_metadata", "num_metadata") and not k.startswith("_")}
    model = cls.from_config(plain)
    state = _load_state(folder, part)
    md = {k[len("metadata_embedding."):]: v for k, v in state.items() if k.startswith("metadata_embedding.")}
    rest = {k: v for k, v in state.items() if not k.startswith("metadata_embedding.")}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    if missing or unexpected:
        raise DiffusersFolderError(f"{os.path.join(folder, part)}: the weights do not fit its config "
                                   f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    from diffusers.models.embeddings import TimestepEmbedding

    tdim = model.time_embedding.linear_1.in_features
    edim = model.time_embedding.linear_2.out_features
    embs = nn.ModuleList([TimestepEmbedding(tdim, edim) for _ in range(n)])
    try:
        embs.load_state_dict(md, strict=True)
    except RuntimeError as exc:
        raise DiffusersFolderError(f"{os.path.join(folder, part)}: metadata_embedding weights for {n} fields "
                                   f"do not load ({exc}).") from exc
    model.class_embedding = MetadataEmbedding(model.time_proj, embs)
    return model.eval(), n


def load_parts(info: dict) -> dict:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder, w = info["folder"], info["weights"]
    unet, n_md = _load_model(info, "unet", UNet2DConditionModel)
    parts = {"unet": unet, "n_metadata": n_md, "controlnet_metadata": 0,
             "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True,
                                                  variant=w["vae"]["variant"]).eval(),
             "text_encoder": CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"), use_safetensors=True,
                                                           variant=w["text_encoder"]["variant"]).eval()}
    if info["controlnet"]:
        parts["controlnet"], n_cn = _load_model(info, "controlnet", ControlNetModel)
        if n_cn and n_cn != n_md:
            raise DiffusersFolderError(f"{os.path.join(folder, 'controlnet')}: the ControlNet takes {n_cn} metadata "
                                       f"fields but the UNet {n_md}.")
        parts["controlnet_metadata"] = n_cn
    for k in ("unet", "vae", "text_encoder", "controlnet"):
        if k in parts:
            parts[k] = parts[k].float()
    return parts


class _Text(nn.Module):
    def __init__(self, te):
        super().__init__()
        self.te = te

    def forward(self, input_ids):
        return self.te(input_ids=input_ids, return_dict=False)[0]


class _Unet(nn.Module):
    def __init__(self, unet, metadata: bool, n_res: int):
        super().__init__()
        self.unet, self.metadata, self.n_res = unet, metadata, n_res

    def forward(self, sample, timestep, encoder_hidden_states, *extra):
        md = extra[0] if self.metadata else None
        res = extra[1 if self.metadata else 0:]
        kw = {}
        if self.n_res:
            kw = {"down_block_additional_residuals": tuple(res[:-1]), "mid_block_additional_residual": res[-1]}
        return self.unet(sample, timestep, encoder_hidden_states, class_labels=md, return_dict=False, **kw)[0]


class _Control(nn.Module):
    def __init__(self, cn, metadata: bool):
        super().__init__()
        self.cn, self.metadata = cn, metadata

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, *extra):
        md = extra[0] if self.metadata else None
        down, mid = self.cn(sample, timestep, encoder_hidden_states, controlnet_cond, class_labels=md,
                            return_dict=False)
        return (*down, mid)


class _VaeDecoder(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent, return_dict=False)[0]


class _VaeEncoder(nn.Module):
    """Image in [-1, 1] -> the mean of the latent distribution (unscaled): deterministic img2img start."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode(image, return_dict=False)[0].mean


def _spec(dtype: str, shape: list) -> dict:
    return {"dtype": dtype, "shape": shape}


def _export(module: nn.Module, args: tuple, path: str, inputs: List[str], outputs: List[str], axes: dict) -> None:
    """Legacy (TorchScript) exporter, opset 17; graphs over 2 GB get one external data file beside them."""
    import onnx

    sub = tempfile.mkdtemp(dir=os.path.dirname(path))
    try:
        tmp = os.path.join(sub, os.path.basename(path))
        with torch.no_grad():
            torch.onnx.export(module, args, tmp, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
        extra = [f for f in os.listdir(sub) if f != os.path.basename(path)]
        if extra or os.path.getsize(tmp) > EXTERNAL_DATA_OVER:
            m = onnx.load(tmp)
            onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                      location=os.path.basename(path) + ".data", size_threshold=1024)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(sub, ignore_errors=True)


def export_fp16(src: str, dst: str) -> None:
    """fp16 weights and compute, fp32 inputs/outputs. Shape inference runs on the file (onnx's in-memory
    inference cannot serialise graphs over 2 GB: an SD UNet in fp32 is 3.4 GB), and a result over the limit
    keeps its weights in one external data file."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.transformers.float16 import convert_float_to_float16

    size = os.path.getsize(src) + (os.path.getsize(src + ".data") if os.path.exists(src + ".data") else 0)
    sub = tempfile.mkdtemp(dir=os.path.dirname(dst))
    try:
        inferred = os.path.join(sub, "inferred.onnx")
        onnx.shape_inference.infer_shapes_path(src, inferred)
        m = onnx.load(inferred, load_external_data=False)
        load_external_data_for_model(m, os.path.dirname(os.path.abspath(src)))  # weights stay beside src
        m = convert_float_to_float16(m, keep_io_types=True, disable_shape_infer=True)
    finally:
        shutil.rmtree(sub, ignore_errors=True)
    if size // 2 > EXTERNAL_DATA_OVER:
        onnx.save(m, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=os.path.basename(dst) + ".data", size_threshold=1024)
    else:
        onnx.save(m, dst)


def export_graphs(parts: dict, out: str) -> dict:
    """Write the ONNX graphs into `out`; return the manifest's "graphs" block."""
    unet, te, vae, cn = parts["unet"], parts["text_encoder"], parts["vae"], parts.get("controlnet")
    n_md = parts["n_metadata"]
    cn_md = bool(parts.get("controlnet_metadata"))
    uc = unet.config
    s = int(uc.sample_size if isinstance(uc.sample_size, int) else uc.sample_size[0])
    s = max(8, min(s, 16))  # export traces a small sample; height and width are dynamic axes
    ch, dim = int(uc.in_channels), int(te.config.hidden_size)
    seq = int(te.config.max_position_embeddings)
    x = torch.randn(2, ch, s, s)
    t = torch.tensor([500.0, 20.0])
    ehs = torch.randn(2, seq, dim)
    md = torch.rand(2, n_md) * 1000 if n_md else None
    lat_axes = {0: "batch", 2: "height", 3: "width"}
    graphs = {}

    _export(_Text(te), (torch.zeros(1, seq, dtype=torch.long),), os.path.join(out, "text_encoder.onnx"),
            ["input_ids"], ["last_hidden_state"], {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}})
    graphs["text_encoder"] = {"file": "text_encoder.onnx",
                              "inputs": {"input_ids": _spec("int64", ["batch", seq])},
                              "outputs": {"last_hidden_state": _spec("float32", ["batch", seq, dim])}}
    base_in = {"sample": _spec("float32", ["batch", ch, "height", "width"]), "timestep": _spec("float32", ["batch"]),
               "encoder_hidden_states": _spec("float32", ["batch", "sequence", dim])}
    base_axes = {"sample": lat_axes, "timestep": {0: "batch"}, "encoder_hidden_states": {0: "batch", 1: "sequence"}}
    md_in = {"metadata": _spec("float32", ["batch", n_md])} if n_md else {}
    res_names: List[str] = []
    res_specs: Dict[str, dict] = {}
    res_args: tuple = ()
    if cn is not None:
        f = 2 ** (len(cn.config.conditioning_embedding_out_channels) - 1)
        cond = torch.rand(2, 3, s * f, s * f)
        with torch.no_grad():
            res = _Control(cn, cn_md)(x, t, ehs, cond, *((md,) if cn_md else ()))
        res_names = [f"down_res_{i}" for i in range(len(res) - 1)] + ["mid_res"]
        for name, r in zip(res_names, res):
            div = s // r.shape[-1]
            res_specs[name] = _spec("float32", ["batch", int(r.shape[1]), f"height/{div}", f"width/{div}"])
        res_args = tuple(res)
        cn_in = md_in if cn_md else {}
        _export(_Control(cn, cn_md), (x, t, ehs, cond) + ((md,) if cn_md else ()),
                os.path.join(out, "controlnet.onnx"), list(base_in) + ["controlnet_cond"] + list(cn_in), res_names,
                {**base_axes, "controlnet_cond": {0: "batch", 2: "image_height", 3: "image_width"},
                 **({"metadata": {0: "batch"}} if cn_md else {}), **{n: {0: "batch", 2: f"h{i}", 3: f"w{i}"}
                                                                   for i, n in enumerate(res_names)}})
        graphs["controlnet"] = {"file": "controlnet.onnx", "conditioning_factor": f,
                                "inputs": {**base_in, "controlnet_cond": _spec("float32", ["batch", 3, "image_height",
                                                                                            "image_width"]), **cn_in},
                                "outputs": res_specs}
    uw = _Unet(unet, bool(n_md), len(res_names))
    _export(uw, (x, t, ehs) + ((md,) if n_md else ()) + res_args, os.path.join(out, "unet.onnx"),
            list(base_in) + list(md_in) + res_names, ["noise_pred"],
            {**base_axes, **({"metadata": {0: "batch"}} if n_md else {}), "noise_pred": lat_axes,
             **{n: {0: "batch", 2: f"h{i}", 3: f"w{i}"} for i, n in enumerate(res_names)}})
    graphs["unet"] = {"file": "unet.onnx", "inputs": {**base_in, **md_in, **res_specs},
                      "outputs": {"noise_pred": _spec("float32", ["batch", ch, "height", "width"])}}
    lc = int(vae.config.latent_channels)
    _export(_VaeDecoder(vae), (torch.randn(1, lc, s, s),), os.path.join(out, "vae_decoder.onnx"), ["latent"],
            ["image"], {"latent": lat_axes, "image": {0: "batch", 2: "image_height", 3: "image_width"}})
    graphs["vae_decoder"] = {"file": "vae_decoder.onnx",
                             "inputs": {"latent": _spec("float32", ["batch", lc, "height", "width"])},
                             "outputs": {"image": _spec("float32", ["batch", 3, "image_height", "image_width"])}}
    vf = 2 ** (len(vae.config.block_out_channels) - 1)
    _export(_VaeEncoder(vae), (torch.rand(1, 3, s * vf, s * vf) * 2 - 1,), os.path.join(out, "vae_encoder.onnx"),
            ["image"], ["latent_mean"], {"image": {0: "batch", 2: "image_height", 3: "image_width"},
                                         "latent_mean": lat_axes})
    graphs["vae_encoder"] = {"file": "vae_encoder.onnx",
                             "inputs": {"image": _spec("float32", ["batch", 3, "image_height", "image_width"])},
                             "outputs": {"latent_mean": _spec("float32", ["batch", lc, "height", "width"])}}
    return graphs


def add_fp16(graphs: dict, out: str) -> None:
    """fp16 UNet/ControlNet beside the fp32 graphs (run after the torch modules are freed: memory)."""
    for g in ("unet", "controlnet"):
        if g in graphs:
            export_fp16(os.path.join(out, f"{g}.onnx"), os.path.join(out, f"{g}_fp16.onnx"))
            graphs[g]["fp16_file"] = f"{g}_fp16.onnx"


def _write_tokenizer(info: dict, out: str) -> dict:
    vocab, merges = tokenizer_tables(info["tokenizer"])
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    sp = special_tokens(info["tokenizer"])
    return {"type": "clip_bpe", "vocab": "vocab.json", "merges": "merges.txt", **sp}


def convert(src: str, out_dir: str, *, model_id: Optional[str] = None, name: Optional[str] = None,
            fp16: bool = False, control_source: str = "layout", license: str = "see the source model's licence",
            metadata_defaults: Optional[dict] = None) -> dict:
    """Inspect, load (safetensors only), export and write the package atomically; returns the manifest."""
    import gc

    info = inspect(src)
    parts = load_parts(info)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        graphs = export_graphs(parts, tmp)
        tok = _write_tokenizer(info, tmp)
        uc, vc = parts["unet"].config, parts["vae"].config
        n_md = parts["n_metadata"]
        del parts  # the torch modules (3+ GB for an SD UNet) are not needed for the fp16 conversion
        gc.collect()
        if fp16:
            add_fp16(graphs, tmp)
        vae_f = 2 ** (len(vc.block_out_channels) - 1)
        unet_f = 2 ** (len(uc.block_out_channels) - 1)
        sample = int(uc.sample_size if isinstance(uc.sample_size, int) else uc.sample_size[0])
        conditions: dict = {"text": {"encoder": "clip", "max_length": tok["max_length"]},
                            "guidance_drops": ["text"],
                            "layout_classes": [{"id": i, "name": n} for i, n in enumerate(LAYOUT_CLASSES)]}
        if n_md:
            if n_md != len(diffusionsat.FIELDS):
                raise DiffusersFolderError(f"{info['folder']}/unet: {n_md} metadata fields; only "
                                           f"DiffusionSat's {len(diffusionsat.FIELDS)} are known.")
            conditions["metadata"] = diffusionsat.manifest_block(metadata_defaults)
        if "controlnet" in graphs:
            conditions["control"] = {"source": control_source, "range": [0.0, 1.0], "scale": 1.0,
                                     "palette": [DEFAULT_PALETTE[n] for n in LAYOUT_CLASSES]}
        model_id = model_id or os.path.basename(os.path.abspath(out_dir))
        manifest = {
            "format": FORMAT, "id": model_id, "name": name or f"{model_id} (diffusers {info['pipeline']})",
            "version": "0.1.0", "kind": "latent", "license": license,
            "description": f"Converted from the diffusers pipeline {os.path.basename(info['folder'])} "
                           f"({info['pipeline']}) by rsgen_qgis export-diffusers.",
            "graphs": graphs, "tokenizer": tok, "scheduler": scheduler_config(info["config"]["scheduler"]),
            "latent": {"channels": int(uc.in_channels), "scaling_factor": float(vc.scaling_factor),
                       "shift_factor": float(getattr(vc, "shift_factor", None) or 0.0), "vae_scale_factor": vae_f},
            "tile": {"size": sample * vae_f, "multiple": vae_f * unet_f},
            "image": {"channels": ["red", "green", "blue"], "range": [-1.0, 1.0]},
            "conditions": conditions,
            "architecture": {"type": f"diffusers.{info['pipeline']}", "unet": info["config"]["unet"].get("_class_name"),
                             "block_out_channels": list(uc.block_out_channels),
                             "cross_attention_dim": uc.cross_attention_dim, "metadata_fields": n_md},
            "defaults": {"steps": 25, "guidance": 7.5, "sampler": "dpmpp_2m"},
        }
        files = sorted(f for f in os.listdir(tmp) if not f.startswith("."))
        manifest["files"] = {f: {"sha256": sha256_file(os.path.join(tmp, f)),
                                 "bytes": os.path.getsize(os.path.join(tmp, f))} for f in files}
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
