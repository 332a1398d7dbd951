"""Check a local diffusers Stable Diffusion pipeline folder before anything is loaded (JSON and file names only).

`export-diffusers` converts SD-class pipelines (UNet2DConditionModel, optional ControlNetModel, AutoencoderKL,
CLIP text encoder + tokenizer, a DDPM-family scheduler). Everything that can be refused is refused here, with
a message naming the file or part: missing parts, architectures the latent runtime cannot run (SDXL's second
text encoder and added time ids, transformer/DiT denoisers, inpainting UNets), unsupported schedulers, and
weights stored only as pickles (.bin/.ckpt/.pt/.pth): we never unpickle, the user converts them to
safetensors first. torch is not imported here, so the checks are cheap and testable on their own.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Optional

from ..core.errors import ModelPackageError

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PICKLE_EXT = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# Schedulers whose config is a discrete DDPM-family noise schedule (betas over num_train_timesteps): the
# runtime's numpy DDIM / DPM-Solver++ / Euler samplers reproduce the trained process from it.
SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
              "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
              "LMSDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "UniPCMultistepScheduler",
              "DEISMultistepScheduler")
UNETS = ("UNet2DConditionModel", "SatUNet")
CONVERT_HINT = ("rsgen never unpickles checkpoints (a pickle can run arbitrary code). If you trust the file, "
                "convert it yourself, e.g. in Python: model = <Class>.from_pretrained(folder, subfolder=part, "
                "use_safetensors=False); model.save_pretrained(folder + '/' + part, safe_serialization=True); "
                "then run export-diffusers again.")


class DiffusersFolderError(ModelPackageError):
    """The diffusers folder cannot be converted (missing part, unsupported model, pickle-only weights)."""


def _json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as exc:
        raise DiffusersFolderError(f"{path}: cannot read this JSON file ({exc}).") from exc
    if not isinstance(d, dict):
        raise DiffusersFolderError(f"{path}: expected a JSON object.")
    return d


def weights_file(folder: str, part: str) -> Dict[str, Optional[str]]:
    """{'variant': None or 'fp16'} when the part has safetensors weights; refuse pickle-only parts."""
    d = os.path.join(folder, part)
    st = sorted(glob.glob(os.path.join(d, "*.safetensors")) + glob.glob(os.path.join(d, "*.safetensors.index.json")))
    if st:
        plain = [p for p in st if ".fp16." not in os.path.basename(p)]
        return {"variant": None if plain else "fp16"}
    pickles = sorted(p for p in glob.glob(os.path.join(d, "*")) if p.lower().endswith(PICKLE_EXT))
    if pickles:
        raise DiffusersFolderError(f"{pickles[0]}: the {part} weights are stored only as a pickle checkpoint "
                                   f"(no .safetensors file in {d}). {CONVERT_HINT.replace('<Class>', part)}")
    raise DiffusersFolderError(f"{d}: no weights file (expected *.safetensors) for the {part}.")


def inspect(folder: str) -> dict:
    """What export needs to know about the folder; raises DiffusersFolderError naming the problem."""
    if os.path.isfile(folder):
        low = folder.lower()
        kind = "a pickle checkpoint" if low.endswith(PICKLE_EXT) else "a single-file checkpoint"
        raise DiffusersFolderError(f"{folder}: this is {kind}, not a diffusers pipeline folder. Give the folder "
                                   "written by diffusers' save_pretrained (model_index.json, unet/, vae/, "
                                   "text_encoder/, tokenizer/, scheduler/)." + (" " + CONVERT_HINT if
                                                                                 low.endswith(PICKLE_EXT) else ""))
    if not os.path.isdir(folder):
        raise DiffusersFolderError(f"{folder}: no such folder.")
    mi_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(mi_path):
        raise DiffusersFolderError(f"{mi_path}: missing; this does not look like a diffusers pipeline folder "
                                   "(saved with save_pretrained).")
    mi = _json(mi_path)
    pipe = str(mi.get("_class_name", ""))
    if "transformer" in mi or any(k in pipe for k in ("StableDiffusion3", "Flux", "PixArt", "DiT", "Sana", "Hunyuan")):
        raise DiffusersFolderError(f"{mi_path}: {pipe or 'this pipeline'} uses a transformer (DiT) denoiser; "
                                   "only UNet-based Stable Diffusion (1.x/2.x-class) pipelines can be converted.")
    if "XL" in pipe or "text_encoder_2" in mi:
        raise DiffusersFolderError(f"{mi_path}: {pipe or 'this pipeline'} is Stable Diffusion XL (two text "
                                   "encoders, added time ids), which is not supported; use an SD 1.x/2.x-class "
                                   "pipeline.")
    missing = [p for p in PARTS if not os.path.isdir(os.path.join(folder, p))]
    if missing:
        raise DiffusersFolderError(f"{folder}: missing part(s) {', '.join(m + '/' for m in missing)}; a Stable "
                                   f"Diffusion pipeline folder needs {', '.join(p + '/' for p in PARTS)}.")
    cfg = {}
    for part, name in (("unet", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json"),
                       ("scheduler", "scheduler_config.json")):
        p = os.path.join(folder, part, name)
        if not os.path.isfile(p):
            raise DiffusersFolderError(f"{p}: missing; the {part} part is incomplete.")
        cfg[part] = _json(p)
    has_cn = os.path.isdir(os.path.join(folder, "controlnet")) or bool(mi.get("controlnet", [None])[0])
    if has_cn:
        p = os.path.join(folder, "controlnet", "config.json")
        if not os.path.isfile(p):
            raise DiffusersFolderError(f"{p}: missing; model_index.json lists a controlnet but its folder is "
                                       "incomplete.")
        cfg["controlnet"] = _json(p)
    _check_unet(os.path.join(folder, "unet", "config.json"), cfg["unet"])
    if cfg["vae"].get("_class_name") != "AutoencoderKL":
        raise DiffusersFolderError(f"{os.path.join(folder, 'vae', 'config.json')}: VAE class "
                                   f"{cfg['vae'].get('_class_name')!r} is not supported (AutoencoderKL only).")
    arch = cfg["text_encoder"].get("architectures") or []
    if arch != ["CLIPTextModel"]:
        raise DiffusersFolderError(f"{os.path.join(folder, 'text_encoder', 'config.json')}: text encoder {arch} "
                                   "is not supported (CLIPTextModel only).")
    if has_cn and cfg["controlnet"].get("_class_name") != "ControlNetModel":
        raise DiffusersFolderError(f"{os.path.join(folder, 'controlnet', 'config.json')}: ControlNet class "
                                   f"{cfg['controlnet'].get('_class_name')!r} is not supported (ControlNetModel).")
    sched = cfg["scheduler"]
    sp = os.path.join(folder, "scheduler", "scheduler_config.json")
    if sched.get("_class_name") not in SCHEDULERS:
        raise DiffusersFolderError(f"{sp}: scheduler {sched.get('_class_name')!r} is not supported; the runtime "
                                   f"samples DDPM-family schedules ({', '.join(SCHEDULERS)}).")
    from ..core.engine.samplers import Schedule

    try:
        Schedule.from_config(scheduler_config(sched))
    except ModelPackageError as exc:
        raise DiffusersFolderError(f"{sp}: {exc}") from exc
    parts = ("unet", "vae", "text_encoder") + (("controlnet",) if has_cn else ())
    weights = {p: weights_file(folder, p) for p in parts}
    return {"folder": os.path.abspath(folder), "pipeline": pipe, "config": cfg, "controlnet": has_cn,
            "weights": weights, "tokenizer": _tokenizer_files(folder)}


def _check_unet(path: str, c: dict) -> None:
    name = c.get("_class_name")
    if name not in UNETS:
        raise DiffusersFolderError(f"{path}: UNet class {name!r} is not supported ({', '.join(UNETS)}).")
    if c.get("addition_embed_type"):
        raise DiffusersFolderError(f"{path}: the UNet uses added embeddings ({c['addition_embed_type']!r}, as "
                                   "SDXL does), which are not supported.")
    if c.get("class_embed_type") or c.get("num_class_embeds"):
        raise DiffusersFolderError(f"{path}: the UNet takes class labels ({c.get('class_embed_type')!r}), which "
                                   "are not supported.")
    if int(c.get("in_channels", 4)) != int(c.get("out_channels", 4)):
        raise DiffusersFolderError(f"{path}: the UNet has {c.get('in_channels')} input channels and "
                                   f"{c.get('out_channels')} outputs (an inpainting or depth UNet); only plain "
                                   "text-to-image UNets are supported.")
    if c.get("time_cond_proj_dim") or c.get("encoder_hid_dim"):
        raise DiffusersFolderError(f"{path}: the UNet uses time_cond_proj_dim / encoder_hid_dim (LCM / IP "
                                   "adapters), which are not supported.")


def scheduler_config(c: dict) -> dict:
    """The manifest's scheduler block: the diffusers noise-schedule keys only."""
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
            "timestep_spacing", "steps_offset", "set_alpha_to_one", "rescale_betas_zero_snr", "thresholding")
    out = {k: c[k] for k in keys if k in c and c[k] is not None}
    out["source_class"] = c.get("_class_name")
    return out


def _tokenizer_files(folder: str) -> dict:
    d = os.path.join(folder, "tokenizer")
    have = {n: os.path.isfile(os.path.join(d, n)) for n in ("vocab.json", "merges.txt", "tokenizer.json")}
    if not (have["vocab.json"] and have["merges.txt"]) and not have["tokenizer.json"]:
        raise DiffusersFolderError(f"{d}: no CLIP tokenizer files (vocab.json + merges.txt, or tokenizer.json).")
    conf = {}
    for n in ("special_tokens_map.json", "tokenizer_config.json"):
        p = os.path.join(d, n)
        if os.path.isfile(p):
            for k, v in _json(p).items():
                conf[k] = v.get("content") if isinstance(v, dict) else v
    return {"dir": d, "files": have, "config": conf}


def tokenizer_tables(info: dict) -> tuple:
    """(vocab dict, merges list of 'a b') from vocab.json + merges.txt, or from tokenizer.json."""
    d, have = info["dir"], info["files"]
    if have["vocab.json"] and have["merges.txt"]:
        from ..core.runtime.clip_tokenizer import read_merges

        with open(os.path.join(d, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        return vocab, [f"{a} {b}" for a, b in read_merges(os.path.join(d, "merges.txt"))]
    tj = _json(os.path.join(d, "tokenizer.json"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        raise DiffusersFolderError(f"{os.path.join(d, 'tokenizer.json')}: not a CLIP byte-level BPE tokenizer.")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    vocab = dict(model["vocab"])
    for t in tj.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    return vocab, merges


def special_tokens(info: dict) -> Dict[str, str]:
    c = info["config"]
    return {"bos": c.get("bos_token") or "<|startoftext|>", "eos": c.get("eos_token") or "<|endoftext|>",
            "pad": c.get("pad_token") or "<|endoftext|>", "unk": c.get("unk_token") or "<|endoftext|>",
            "max_length": int(c.get("model_max_length") or 77) if int(c.get("model_max_length") or 77) < 10000 else 77}


def list_parts(folder: str) -> List[str]:
    return [p for p in PARTS + ("controlnet",) if os.path.isdir(os.path.join(folder, p))]
