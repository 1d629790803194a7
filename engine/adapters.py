"""Condition adapters: each turns one kind of model plus its condition into a denoiser for the loop.

A denoiser runs the conditional and unconditional branches as one batch, in the order the matching diffusers
pipeline uses, so that the engine reproduces the pipelines' numbers. Big batches are cut across the CPU's cores by
the splitter the engine passes in (engine/parallel.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .guiders.interval import in_interval
from .parallel import plain_call
from .sampler import Step


@dataclass
class ControlBranch:
    """One ControlNet with its prepared control image (B, 3, H, W) in [0, 1] and its knobs."""

    controlnet: torch.nn.Module
    image: torch.Tensor
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def active_scale(self, step: Step) -> float:
        return self.scale * float(in_interval(step.index, step.num_steps, (self.start, self.end)))


class TextDenoiser:
    """Stable Diffusion family: a UNet with cross-attention to prompt embeddings, plus optional ControlNets."""

    def __init__(self, unet, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None,
                 controls: list[ControlBranch] = (), guess_mode: bool = False, prediction_type: str = "epsilon",
                 split=plain_call):
        self.unet = unet
        self.prompt_embeds = prompt_embeds  # (B, L, D)
        self.negative_embeds = negative_embeds  # (B, L, D)
        self.controls = list(controls)
        self.guess_mode = guess_mode
        self.prediction_type = prediction_type
        self.split = split  # split(fn, batch, *args, **kwargs): a BatchSplitter or plain_call

    def __call__(self, x, t, step: Step, with_uncond: bool):
        if with_uncond:
            x_in = torch.cat([x, x])  # (2B, C, h, w): uncond first, as StableDiffusionPipeline batches it
            embeds = torch.cat([self.negative_embeds, self.prompt_embeds])  # (2B, L, D)
        else:
            x_in, embeds = x, self.prompt_embeds
        down, mid = self._control_residuals(x, x_in, t, step, embeds, with_uncond)
        out = self.split(self.unet, len(x_in), x_in, t, encoder_hidden_states=embeds,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)[0]
        if with_uncond:
            pred_uncond, pred_cond = out.chunk(2)
            return pred_cond, pred_uncond
        return out, None

    def _control_residuals(self, x, x_in, t, step: Step, embeds, with_uncond: bool):
        """Summed ControlNet residuals, as diffusers' MultiControlNetModel sums them; guess mode feeds c only."""
        down, mid = None, None
        cond_only = self.guess_mode and with_uncond
        for branch in self.controls:
            scale = branch.active_scale(step)
            if scale == 0:
                continue  # adds exact zeros to the UNet, so the call can be skipped
            image = branch.image
            if cond_only:
                control_in, control_embeds = x, self.prompt_embeds
            else:
                control_in, control_embeds = x_in, embeds
                image = torch.cat([image, image]) if with_uncond else image
            d, m = self.split(branch.controlnet, len(control_in), control_in, t, encoder_hidden_states=control_embeds,
                              controlnet_cond=image, conditioning_scale=scale, guess_mode=self.guess_mode,
                              return_dict=False)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        if cond_only and down is not None:
            down = [torch.cat([torch.zeros_like(d), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return down, mid


class ClassDenoiser:
    """Class-conditional transformer (DiT): AdaLN-zero conditioning on a label id; the null class is an id too."""

    def __init__(self, transformer, labels: torch.Tensor, null_id: int, latent_channels: int,
                 prediction_type: str = "epsilon", split=plain_call):
        self.transformer = transformer
        self.labels = labels  # (B,)
        self.null_labels = torch.full_like(labels, null_id)  # (B,)
        self.latent_channels = latent_channels
        self.prediction_type = prediction_type
        self.split = split

    def __call__(self, x, t, step: Step, with_uncond: bool):
        if with_uncond:
            x_in = torch.cat([x, x])  # (2B, C, h, w): cond first, as DiTPipeline batches it
            labels = torch.cat([self.labels, self.null_labels])  # (2B,)
        else:
            x_in, labels = x, self.labels
        timesteps = t[None].to(x.device) if t.ndim == 0 else t.to(x.device)
        timesteps = timesteps.expand(x_in.shape[0])  # (2B,) or (B,)
        out = self.split(self.transformer, len(x_in), x_in, timestep=timesteps, class_labels=labels,
                         return_dict=False)[0]
        eps = out[:, : self.latent_channels]  # drop the learned variance channels, if any
        if with_uncond:
            pred_cond, pred_uncond = torch.split(eps, len(eps) // 2, dim=0)
            return pred_cond, pred_uncond
        return eps, None
