"""Condition adapters: each turns one kind of model plus its condition into a denoiser for the loop.

A denoiser runs the conditional, unconditional and perturbed branches as one batch, in the order the matching
diffusers pipeline uses, so that the engine reproduces the pipelines' numbers. Big batches are cut across the CPU's cores by
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
    """Stable Diffusion family: a UNet with cross-attention to prompt embeddings, plus optional ControlNets.

    Branches in batch order [u, c, p], as StableDiffusionPipeline (u, c) and StableDiffusionPAGPipeline (u, c, p)
    batch them. The perturbed branch p is either rows of the same batch marked for perturbed attention
    (engine/perturb.py) or, with a `weak_unet`, that model's conditional prediction (AutoGuidance)."""

    def __init__(self, unet, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None,
                 controls: list[ControlBranch] = (), guess_mode: bool = False, prediction_type: str = "epsilon",
                 split=plain_call, weak_unet=None):
        self.unet = unet
        self.prompt_embeds = prompt_embeds  # (B, L, D)
        self.negative_embeds = negative_embeds  # (B, L, D)
        self.controls = list(controls)
        self.guess_mode = guess_mode
        self.prediction_type = prediction_type
        self.split = split  # split(fn, batch, *args, **kwargs): a BatchSplitter or plain_call
        self.weak_unet = weak_unet

    def __call__(self, x, t, step: Step, with_uncond: bool, with_perturbed: bool = False):
        in_batch = with_perturbed and self.weak_unet is None
        branches = ["u"] * with_uncond + ["c"] + ["p"] * in_batch
        x_in = torch.cat([x] * len(branches))  # (nB, C, h, w)
        embeds = torch.cat([self.negative_embeds if b == "u" else self.prompt_embeds for b in branches])
        extra = {"cross_attention_kwargs": {"perturb": _rows(branches, "p", len(x))}} if in_batch else {}
        down, mid = self._control_residuals(x, x_in, t, step, embeds, branches)
        out = self.split(self.unet, len(x_in), x_in, t, encoder_hidden_states=embeds,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False,
                         **extra)[0]
        preds = dict(zip(branches, out.chunk(len(branches))))
        if with_perturbed and not in_batch:
            preds["p"] = self.split(self.weak_unet, len(x), x, t, encoder_hidden_states=self.prompt_embeds,
                                    return_dict=False)[0]
        return preds["c"], preds.get("u"), preds.get("p")

    def _control_residuals(self, x, x_in, t, step: Step, embeds, branches: list[str]):
        """Summed ControlNet residuals, as diffusers' MultiControlNetModel sums them; guess mode feeds the
        unconditional rows none (their residuals are zeros)."""
        down, mid = None, None
        fed = [b for b in branches if b != "u"] if self.guess_mode else branches
        for branch in self.controls:
            scale = branch.active_scale(step)
            if scale == 0:
                continue  # adds exact zeros to the UNet, so the call can be skipped
            control_in = torch.cat([x] * len(fed))
            control_embeds = torch.cat([self.negative_embeds if b == "u" else self.prompt_embeds for b in fed])
            image = torch.cat([branch.image] * len(fed))
            d, m = self.split(branch.controlnet, len(control_in), control_in, t, encoder_hidden_states=control_embeds,
                              controlnet_cond=image, conditioning_scale=scale, guess_mode=self.guess_mode,
                              return_dict=False)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        if len(fed) < len(branches) and down is not None:  # guess mode with the unconditional branch first
            down = [torch.cat([torch.zeros_like(d[: len(x)]), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid[: len(x)]), mid])
        return down, mid


def _rows(branches: list[str], name: str, batch: int) -> torch.Tensor:
    """A boolean (len(branches) * batch,) marking the rows of one branch."""
    return torch.tensor([b == name for b in branches]).repeat_interleave(batch)


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

    def __call__(self, x, t, step: Step, with_uncond: bool, with_perturbed: bool = False):
        branches = ["c"] + ["u"] * with_uncond + ["p"] * with_perturbed  # cond first, as DiTPipeline batches it
        x_in = torch.cat([x] * len(branches))
        labels = torch.cat([self.null_labels if b == "u" else self.labels for b in branches])  # (nB,)
        timesteps = t[None].to(x.device) if t.ndim == 0 else t.to(x.device)
        timesteps = timesteps.expand(x_in.shape[0])  # (nB,)
        extra = {"cross_attention_kwargs": {"perturb": _rows(branches, "p", len(x))}} if with_perturbed else {}
        out = self.split(self.transformer, len(x_in), x_in, timestep=timesteps, class_labels=labels,
                         return_dict=False, **extra)[0]
        eps = out[:, : self.latent_channels]  # drop the learned variance channels, if any
        preds = dict(zip(branches, eps.chunk(len(branches))))
        return preds["c"], preds.get("u"), preds.get("p")
