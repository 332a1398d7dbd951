"""Adversarial fine-tuning of a latent denoiser (train.py --adv-weight): a small critic of our own, trained from
scratch beside the denoiser, tells real latents from the denoiser's x0 predictions at the noise levels where
detail is drawn (t < --adv-t-max), and the denoiser is pushed to make its x0 predictions pass.

Why: a diffusion model trained with the squared error alone predicts the mean of what a noisy latent could be;
a small, short-trained one predicts a blurred mean that the tiny autoencoder decodes as streaks and shards.
An adversarial term on x0 (as in adversarial diffusion distillation, Sauer et al. 2023, and latent ADD, 2024,
here with a critic of its own rather than a pretrained network, so no judge of the evaluation steers it) asks
for predictions that look like samples. The squared-error loss stays the anchor; the adversarial term's weight
is scaled each step to its gradient's size at the UNet's last layer (Esser et al. 2021, VQGAN), so one base
weight holds across noise levels and models.

The critic: a patch critic (spectrally normalised convolutions, 1/4 of the latent's resolution out) over the
latent with the spatial conditions (layout, mask, masked image, guide) stacked on, and a projection of the
condition vector (prompt embedding, GSD, ...) onto its features, so it judges "a real latent for this condition",
not only "a real latent". Hinge losses. It never runs at generation time and is not exported.
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm


class LatentCritic(nn.Module):
    """(latent (N, C, H, W), spatial (N, S, H, W), cond (N, D)) -> patch logits (N, H/4, W/4)."""

    def __init__(self, channels: int, spatial_channels: int, cond_dim: int, width: int = 64):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(channels + spatial_channels, w, 3, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w, w, 3, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 2 * w, 3, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
        )
        self.head = spectral_norm(nn.Conv2d(2 * w, 1, 1))
        self.proj = spectral_norm(nn.Linear(cond_dim, 2 * w, bias=False))

    def forward(self, latent: torch.Tensor, spatial: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.body(torch.cat([latent, spatial], 1))
        return self.head(h)[:, 0] + torch.einsum("nchw,nc->nhw", h, self.proj(cond))


def x0_from_v(xt: torch.Tensor, v: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The x0 a v prediction implies: sqrt(a) x_t - sqrt(1 - a) v (at: (N, 1, 1, 1) cumulative alphas)."""
    return at.sqrt() * xt - (1 - at).sqrt() * v


def critic_loss(critic: LatentCritic, real: torch.Tensor, fake: torch.Tensor, spatial: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the critic: real latents above +1, the denoiser's (detached) predictions below -1."""
    return F.relu(1 - critic(real, spatial, cond)).mean() + F.relu(1 + critic(fake.detach(), spatial, cond)).mean()


def generator_loss(critic: LatentCritic, fake: torch.Tensor, spatial: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss: the critic's score of the predictions, negated."""
    return -critic(fake, spatial, cond).mean()


def adaptive_weight(rec: torch.Tensor, adv: torch.Tensor, last: torch.Tensor, base: float,
                    cap: float = 1e3) -> torch.Tensor:
    """base x |grad rec| / |grad adv| at the last layer's weight `last` (VQGAN's balance), detached, at most cap."""
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
    return (base * g_rec.norm() / (g_adv.norm() + 1e-6)).clamp(max=cap).detach()


class Adversary:
    """The critic, its optimizer and one training step of each side (train.py drives it).

    weight: base weight of the adversarial term (0 turns it off); t_max: rows with t below it get the term;
    warmup: steps in which only the critic learns (the denoiser's term starts once it tells something apart)."""

    def __init__(self, channels: int, spatial_channels: int, cond_dim: int, weight: float, t_max: int,
                 lr: float = 1e-4, warmup: int = 200, width: int = 64, device: str = "cpu"):
        self.critic = LatentCritic(channels, spatial_channels, cond_dim, width).to(device)
        self.opt = torch.optim.Adam(self.critic.parameters(), lr=lr, betas=(0.0, 0.99))
        self.weight, self.t_max, self.warmup, self.steps = float(weight), int(t_max), int(warmup), 0

    def denoiser_term(self, rec: torch.Tensor, pred: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor,
                      t: torch.Tensor, at: torch.Tensor, spatial: torch.Tensor, cond: torch.Tensor,
                      last: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The denoiser's loss with the adversarial term added (rec: its squared-error loss), and what to log.
        Also trains the critic one step on the same rows (the predictions detached)."""
        rows = t < self.t_max
        info = {"adv_rows": int(rows.sum())}
        if not bool(rows.any()):
            return rec, info
        fake = x0_from_v(xt[rows], pred[rows].float(), at[rows])
        sp, cd = spatial[rows], cond[rows]
        for p in self.critic.parameters():
            p.requires_grad_(True)
        d_loss = critic_loss(self.critic, x0[rows], fake, sp, cd)
        self.opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt.step()
        self.steps += 1
        info["critic"] = float(d_loss.detach())
        if self.steps <= self.warmup or self.weight <= 0:
            return rec, info
        for p in self.critic.parameters():  # the denoiser's term moves the denoiser only
            p.requires_grad_(False)
        g = generator_loss(self.critic, fake, sp, cd)
        lam = adaptive_weight(rec, g, last, self.weight)
        info["adv"], info["lambda"] = float(g), float(lam)
        return rec + lam * g, info

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "opt": self.opt.state_dict(), "steps": self.steps}

    def load_state_dict(self, st: dict) -> None:
        self.critic.load_state_dict(st["critic"])
        self.opt.load_state_dict(st["opt"])
        self.steps = int(st.get("steps", 0))
