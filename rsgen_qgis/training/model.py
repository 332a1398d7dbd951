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
        temb = cfg.block_out_channels[0] * 4
        self.cond_mlp = nn.Sequential(nn.Linear(cfg.cond_dim, temb), nn.SiLU(), nn.Linear(temb, temb))

    def forward(self, sample, timestep, spatial, cond):
        x = torch.cat([sample, spatial], dim=1)
        return self.unet(x, timestep, class_labels=self.cond_mlp(cond)).sample
