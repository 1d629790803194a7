"""The noise schedule every latent recipe shares (lab-sd's, scaled-linear over 1000 steps), noising on it, and the
min-SNR-weighted eps loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def noised(latents: torch.Tensor, t: torch.Tensor, gen: torch.Generator, schedule: DDPMScheduler) -> torch.Tensor:
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, with eps drawn from `gen`."""
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)  # (B, 4, h, w)
    return schedule.add_noise(latents, noise, t)


def min_snr_weights(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float = 5.0,
                    floor: float = 0.0) -> torch.Tensor:
    """Loss weights for eps prediction. The eps loss equals SNR times the x0 loss, so the x0 loss is weighted by
    clamp(SNR, floor, gamma): gamma caps the easy low-noise steps (Min-SNR, Hang et al., 2023); a floor keeps the
    high-noise steps, where SD's schedule leaves SNR near 0.005 and layout is decided, from counting for nothing
    (the reason position is lost; see Lin et al., 2024, on what the last timesteps carry)."""
    a = scheduler.alphas_cumprod.to(t.device)[t]
    snr = a / (1 - a)
    return torch.clamp(snr, min=floor, max=gamma) / snr


def weighted_eps_loss(pred: torch.Tensor, noise: torch.Tensor, schedule: DDPMScheduler, t: torch.Tensor,
                      floor: float = 0.0) -> torch.Tensor:
    """Per-sample eps MSE (B,) times `min_snr_weights`, the loss of every latent denoiser the lab trains."""
    return F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * min_snr_weights(schedule, t, floor=floor)
