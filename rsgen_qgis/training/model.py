"""The rsgen denoiser: a diffusers UNet2DModel with condition channels and a global condition vector.

Why this shape: pixel space (no VAE to train or run), so a 64 px tile costs one small UNet call on a laptop
CPU. Spatial conditions (layout one-hot, inpainting mask + masked image, upsampled low-res guide) are
concatenated to the noisy image as extra input channels; global conditions (sentence embedding of the
prompt, metadata, presence flags) go through a small MLP into the UNet's time embedding via diffusers'
`class_embed_type="identity"` (added to the timestep embedding, FiLM-like through every ResNet block).
A pooled sentence embedding carries what class-level prompts need; cross-attention over tokens would cost
more than the whole 2-core budget.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Tuple

import torch
from diffusers import UNet2DModel
from torch import nn


@dataclass
class DenoiserConfig:
    image_channels: int = 3
    spatial_channels: int = 13
    cond_dim: int = 399
    block_out_channels: Tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_levels: Tuple[bool, ...] = (False, False, True)
    norm_num_groups: int = 8
    attention_head_dim: int = 32
    tile: int = 64
    guidance_input: bool = False  # guidance-distilled: the last cond value is the guidance scale (distill.py)
    # ResNet layers beyond layers_per_block, per level, in that level's down block and its mirror up block (a grown
    # UNet: grow_state() adds them to a trained one as identities). () = none; attention levels take none.
    extra_layers: Tuple[int, ...] = ()

    def __post_init__(self):
        self.extra_layers = tuple(self.extra_layers) if any(self.extra_layers) else ()  # all zeros = none

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DenoiserConfig":
        d = dict(d)
        for k in ("block_out_channels", "attention_levels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


class Denoiser(nn.Module):
    """forward(sample, timestep, spatial, cond) -> model prediction (v, epsilon or x0 per the schedule)."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
        self.unet = UNet2DModel(
            sample_size=cfg.tile,
            in_channels=cfg.image_channels + cfg.spatial_channels,
            out_channels=cfg.image_channels,
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            down_block_types=down,
            up_block_types=up,
            norm_num_groups=cfg.norm_num_groups,
            attention_head_dim=cfg.attention_head_dim,
            class_embed_type="identity",
        )
        add_layers(self.unet, cfg)
        temb = cfg.block_out_channels[0] * 4
        self.cond_mlp = nn.Sequential(nn.Linear(cfg.cond_dim, temb), nn.SiLU(), nn.Linear(temb, temb))

    def forward(self, sample, timestep, spatial, cond):
        x = torch.cat([sample, spatial], dim=1)
        return self.unet(x, timestep, class_labels=self.cond_mlp(cond)).sample


def extra_per_level(cfg: DenoiserConfig) -> Tuple[int, ...]:
    """cfg.extra_layers as one count per level (zeros where it says nothing); ValueError where it cannot hold."""
    n = len(cfg.block_out_channels)
    extra = tuple(cfg.extra_layers) or (0,) * n
    if len(extra) != n or any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in extra):
        raise ValueError(f"extra_layers {cfg.extra_layers!r}: one count >= 0 per level of {cfg.block_out_channels}")
    if any(k and att for k, att in zip(extra, cfg.attention_levels)):
        raise ValueError(f"extra_layers {cfg.extra_layers!r}: an attention level takes no extra layers")
    return extra


def _resnet_like(t, in_channels: int, out_channels: int):
    from diffusers.models.resnet import ResnetBlock2D

    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=t.time_emb_proj.in_features,
                         groups=t.norm2.num_groups, eps=t.norm2.eps, time_embedding_norm=t.time_embedding_norm,
                         output_scale_factor=t.output_scale_factor, non_linearity="silu")


def add_layers(unet: UNet2DModel, cfg: DenoiserConfig) -> None:
    """Add cfg's extra ResNet layers to a built UNet. Level i's down block gets them after its own (each adds a
    skip connection), and the mirror up block gets as many at index 1, after its first layer: the first layer then
    takes the last extra layer's skip (the same tensor as before when the extras are identities) and each inserted
    one takes the skip after it, so with grow_state() the grown UNet computes what the smaller one did.
    UNet2DModel.forward hands each up block as many skips as it has layers."""
    n = len(cfg.block_out_channels)
    for i, k in enumerate(extra_per_level(cfg)):
        if not k:
            continue
        down, up = unet.down_blocks[i], unet.up_blocks[n - 1 - i]
        ch = cfg.block_out_channels[i]
        t = down.resnets[-1]
        down.resnets.extend(_resnet_like(t, ch, ch) for _ in range(k))
        for _ in range(k):
            up.resnets.insert(1, _resnet_like(t, 2 * ch, ch))


def grow_state(small: dict, small_cfg: DenoiserConfig, model: "Denoiser") -> dict:
    """model's state dict holding a smaller trained model's weights (`small`, same config but fewer extra layers),
    the new layers set to identities (their last convolution zero; an up layer's shortcut passes its input and
    drops the skip), so that model computes what the small one did and training goes on from there."""
    big_cfg = model.cfg
    if small_cfg.to_dict() | {"extra_layers": ()} != big_cfg.to_dict() | {"extra_layers": ()}:
        raise ValueError("grow_state: the two configs differ in more than their extra layers")
    e_s, e_b = extra_per_level(small_cfg), extra_per_level(big_cfg)
    if any(b < s for s, b in zip(e_s, e_b)):
        raise ValueError(f"grow_state: {big_cfg.extra_layers} has fewer layers than {small_cfg.extra_layers}")
    n, L = len(e_s), big_cfg.layers_per_block
    out = {k: v.clone() for k, v in model.state_dict().items()}
    pat = re.compile(r"^unet\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$")
    for key, v in small.items():
        m = pat.match(key)
        if m:
            u, j = int(m.group(1)), int(m.group(2))
            d = e_b[n - 1 - u] - e_s[n - 1 - u]
            key = f"unet.up_blocks.{u}.resnets.{j + d if j >= 1 else j}.{m.group(3)}"
        if key not in out or tuple(out[key].shape) != tuple(v.shape):
            raise ValueError(f"grow_state: {key!r} does not fit the grown model")
        out[key] = v.clone()
    for i in range(n):
        d = e_b[i] - e_s[i]
        ch = big_cfg.block_out_channels[i]
        for j in range(L + e_s[i], L + e_b[i]):
            p = f"unet.down_blocks.{i}.resnets.{j}."
            out[p + "conv2.weight"].zero_(); out[p + "conv2.bias"].zero_()
        for j in range(1, 1 + d):
            p = f"unet.up_blocks.{n - 1 - i}.resnets.{j}."
            out[p + "conv2.weight"].zero_(); out[p + "conv2.bias"].zero_()
            w = torch.zeros_like(out[p + "conv_shortcut.weight"])
            w[:, :ch, 0, 0] = torch.eye(ch)
            out[p + "conv_shortcut.weight"] = w
            out[p + "conv_shortcut.bias"].zero_()
    return out
