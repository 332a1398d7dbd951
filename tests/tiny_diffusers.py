"""Tiny random-config diffusers Stable Diffusion pipelines, built inside the tests (nothing downloaded).

A byte-level BPE vocabulary is learnt here from a few sentences (all 256 byte symbols, with and without
'</w>', plus merges), so CLIPTokenizer, CLIPTextModel, UNet2DConditionModel, AutoencoderKL and ControlNetModel
all run with tiny sizes in well under a second per step on a CPU.
"""
from __future__ import annotations

import collections
import json
import os

CORPUS = ("a satellite image of farmland with fields and roads", "dense residential area by a river",
          "airport runway, industrial buildings and parking lots", "forest and lakes in the mountains",
          "a harbour with boats; the city's old town")
SPECIALS = ("<|startoftext|>", "<|endoftext|>")
TEXT_DIM = 32


def _one_torch_thread() -> None:
    """Tiny models on a loaded 2-core machine: torch's thread pool spins and a 4-step pipeline call took 15 s
    instead of 0.07 s (measured); one intra-op thread is plenty for these sizes."""
    import torch

    torch.set_num_threads(1)


_one_torch_thread()


def _bytes_to_unicode():
    from rsgen_qgis.core.runtime.clip_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def write_clip_vocab(folder: str, n_merges: int = 150) -> None:
    """vocab.json + merges.txt of a byte-level BPE learnt (greedy pair counts) on CORPUS."""
    from rsgen_qgis.core.runtime.clip_tokenizer import normalize, pre_tokenize

    b2u = _bytes_to_unicode()
    base = list(b2u.values())
    vocab = {t: i for i, t in enumerate(base + [c + "</w>" for c in base])}
    words = collections.Counter()
    for s in CORPUS:
        for piece in pre_tokenize(normalize(s)):
            chars = [b2u[b] for b in piece.encode("utf-8")]
            words[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
        new = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    for t in SPECIALS:
        vocab[t] = len(vocab)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def hf_tokenizer(folder: str, pad: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder, pad_token=pad, model_max_length=77)


SCHEDULER_BASE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1,
                  "set_alpha_to_one": False, "clip_sample": False, "timestep_spacing": "leading"}


def make_scheduler(name: str = "DDIMScheduler", **over):
    import diffusers

    cls = getattr(diffusers, name)
    return cls.from_config({**SCHEDULER_BASE, **over})


def tiny_components(seed: int = 0, controlnet: bool = False, sd2: bool = False):
    """(tokenizer-less) modules: text encoder, UNet, VAE and optionally a ControlNet, all random."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=(2, 4) if sd2 else 4, norm_num_groups=8,
        use_linear_projection=sd2, upcast_attention=sd2)  # SD 2.x: linear projections, per-block head counts
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    cn = None
    if controlnet:
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
        with torch.no_grad():  # its zero convolutions would make the ControlNet a no-op: give them weights
            zero = list(cn.controlnet_down_blocks) + [cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]
            for mod in zero:
                for prm in mod.parameters():
                    prm.normal_(0.0, 0.2)
    return unet, vae, cn


def tiny_text_encoder(vocab_size: int, seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                         eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    return CLIPTextModel(cfg).eval()


def build_tiny_sd(folder: str, *, controlnet: bool = False, scheduler: str = "DDIMScheduler", seed: int = 0,
                  sd2: bool = False,
                  **sched_over) -> str:
    """A diffusers StableDiffusion(ControlNet)Pipeline folder with safetensors weights; returns the folder."""
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

    tok_dir = os.path.join(folder + "-vocab")
    write_clip_vocab(tok_dir)
    tok = hf_tokenizer(tok_dir, pad="!" if sd2 else "<|endoftext|>")
    unet, vae, cn = tiny_components(seed, controlnet, sd2)
    te = tiny_text_encoder(len(tok), seed)
    kw = dict(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=make_scheduler(scheduler, **sched_over),
              safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = StableDiffusionControlNetPipeline(controlnet=cn, **kw) if controlnet else StableDiffusionPipeline(**kw)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def make_satunet(folder: str, n: int = 7, seed: int = 1, part: str = "unet") -> list:
    """Turn the UNet of a tiny SD folder into a DiffusionSat SatUNet (config + metadata_embedding weights, as
    DiffusionSat saves them), or give its ControlNet (part="controlnet") DiffusionSat's metadata embedding;
    returns the metadata embeddings' state dicts (for an independent reference)."""
    import torch
    from diffusers.models.embeddings import TimestepEmbedding
    from safetensors.torch import load_file, save_file

    d = os.path.join(folder, part)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg.update({"use_metadata": True, "num_metadata": n})
    if part == "unet":
        cfg["_class_name"] = "SatUNet"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    path = os.path.join(d, "diffusion_pytorch_model.safetensors")
    state = load_file(path)
    torch.manual_seed(seed)
    tin, tout = cfg["block_out_channels"][0], cfg["block_out_channels"][0] * 4
    embs = []
    for i in range(n):
        e = TimestepEmbedding(tin, tout)
        embs.append({k: v.clone() for k, v in e.state_dict().items()})
        for k, v in e.state_dict().items():
            state[f"metadata_embedding.{i}.{k}"] = v.contiguous()
    save_file(state, path)
    return embs
