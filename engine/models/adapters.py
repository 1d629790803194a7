"""Condition adapters: each turns one kind of model plus its condition into a denoiser for the loop.

A denoiser runs the conditional, unconditional and perturbed branches as one batch, in the order the matching
diffusers pipeline uses, so that the engine reproduces the pipelines' numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..guiders.interval import in_interval
from ..sampler import Step
from ..spaces import FLOW


def model_family(pipe) -> str:
    """What a loaded text or class pipeline is, from its parts: "sd3" (an MM-DiT with CLIP-L, CLIP-G and maybe T5),
    "sdxl" (a UNet with two CLIP encoders and SDXL's added size conditioning), "sd" (one CLIP, a UNet) or "dit"."""
    if getattr(pipe, "unet", None) is not None:
        return "sdxl" if pipe.unet.config.get("addition_embed_type") == "text_time" else "sd"
    return "sd3" if hasattr(pipe, "text_encoder_2") else "dit"


@dataclass(frozen=True)
class PromptCondition:
    """One branch's text condition: the token embeddings, and for SDXL and SD3 the pooled embedding; for SDXL
    also the six size ids of its micro-conditioning."""

    embeds: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor | None = None  # (B, P)
    time_ids: torch.Tensor | None = None  # (B, 6): original size, crop top-left, target size, each (h, w) / (y, x)


def _unet_inputs(conds: list[PromptCondition]) -> dict:
    """The UNet's condition arguments for branches batched in this order."""
    inputs = {"encoder_hidden_states": torch.cat([c.embeds for c in conds])}  # (nB, L, D)
    if conds[0].pooled is not None:  # SDXL's `text_time` added conditioning
        inputs["added_cond_kwargs"] = {"text_embeds": torch.cat([c.pooled for c in conds]),  # (nB, P)
                                       "time_ids": torch.cat([c.time_ids for c in conds])}  # (nB, 6)
    return inputs


@dataclass(frozen=True)
class MicroConditioning:
    """SDXL's size and crop conditioning (Podell et al., 2023, section 2.2) of one branch, in diffusers' order:
    original size (h, w), crop top-left (y, x), target size (h, w). Each branch's rows carry that branch's ids at
    any batch size; StableDiffusionXLPipeline repeats the (negative, positive) pair per image instead, so with
    several images and negative conditioning set its rows mix the two (a single image is the same in both)."""

    original_size: tuple[int, int]
    crop_coords: tuple[int, int]
    target_size: tuple[int, int]

    @classmethod
    def from_request(cls, req, height: int, width: int, negative: bool = False) -> "MicroConditioning":
        """The request's (width, height) and (x, y) fields, flipped to diffusers' order; unset ones take
        StableDiffusionXLPipeline's defaults (the image's size, crop 0 0). The negative branch shares the positive
        conditioning unless the request sets any negative field."""
        prefix = "negative_" if negative and any(
            getattr(req, f"negative_{n}") is not None for n in ("original_size", "crop_coords", "target_size")) else ""

        def flipped(name: str, default: tuple[int, int]) -> tuple[int, int]:
            value = getattr(req, prefix + name)
            return default if value is None else (value[1], value[0])

        return cls(flipped("original_size", (height, width)), flipped("crop_coords", (0, 0)),
                   flipped("target_size", (height, width)))

    def time_ids(self, pipe, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(B, 6) ids through the pipeline's own `_get_add_time_ids`, which checks them against the UNet."""
        encoder_2 = pipe.text_encoder_2
        projection_dim = encoder_2.config.projection_dim if encoder_2 is not None else None
        ids = pipe._get_add_time_ids(self.original_size, self.crop_coords, self.target_size, dtype=dtype,
                                     text_encoder_projection_dim=projection_dim)  # (1, 6)
        return ids.to(device).repeat(batch, 1)


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
    """Stable Diffusion family (SD 1.x, SDXL): a UNet with cross-attention to prompt embeddings (and SDXL's pooled
    embedding and size ids), plus optional ControlNets.

    Branches in batch order [u, c, p], as StableDiffusionPipeline (u, c) and StableDiffusionPAGPipeline (u, c, p)
    batch them, and their XL versions. The perturbed branch p (engine/guiders/branch.py) is either rows of the same
    batch, marked for the attention processors the branch installed for the run (engine/guiders/perturb.py), or,
    with a `branch_model` (a branch that runs a model of its own: AutoGuidance's weak UNet), that model's
    conditional prediction."""

    def __init__(self, unet, cond: PromptCondition, uncond: PromptCondition | None,
                 controls: list[ControlBranch] = (), guess_mode: bool = False, prediction_type: str = "epsilon",
                 branch_model=None):
        self.unet = unet
        self.cond = cond
        self.uncond = uncond
        self.controls = list(controls)
        self.guess_mode = guess_mode
        self.prediction_type = prediction_type
        self.branch_model = branch_model

    def __call__(self, x, t, step: Step, with_uncond: bool, with_perturbed: bool = False):
        in_batch = with_perturbed and self.branch_model is None
        branches = ["u"] * with_uncond + ["c"] + ["p"] * in_batch
        x_in = torch.cat([x] * len(branches))  # (nB, C, h, w)
        inputs = _unet_inputs(self._conditions(branches))
        extra = {"cross_attention_kwargs": {"perturb": _rows(branches, "p", len(x))}} if in_batch else {}
        down, mid = self._control_residuals(x, t, step, branches)
        out = self.unet(x_in, t, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False, **inputs, **extra)[0]
        preds = dict(zip(branches, out.chunk(len(branches))))
        if with_perturbed and not in_batch:
            preds["p"] = self.branch_model(x, t, return_dict=False, **_unet_inputs([self.cond]))[0]
        return preds["c"], preds.get("u"), preds.get("p")

    def _conditions(self, branches: list[str]) -> list[PromptCondition]:
        return [self.uncond if b == "u" else self.cond for b in branches]

    def _control_residuals(self, x, t, step: Step, branches: list[str]):
        """Summed ControlNet residuals, as diffusers' MultiControlNetModel sums them; guess mode feeds the
        unconditional rows none (their residuals are zeros)."""
        down, mid = None, None
        fed = [b for b in branches if b != "u"] if self.guess_mode else branches
        for branch in self.controls:
            scale = branch.active_scale(step)
            if scale == 0:
                continue  # adds exact zeros to the UNet, so the call can be skipped
            control_in = torch.cat([x] * len(fed))
            image = torch.cat([branch.image] * len(fed))
            d, m = branch.controlnet(control_in, t, controlnet_cond=image,
                              conditioning_scale=scale, guess_mode=self.guess_mode, return_dict=False,
                              **_unet_inputs(self._conditions(fed)))
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        if len(fed) < len(branches) and down is not None:  # guess mode with the unconditional branch first
            down = [torch.cat([torch.zeros_like(d[: len(x)]), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid[: len(x)]), mid])
        return down, mid


def _rows(branches: list[str], name: str, batch: int) -> torch.Tensor:
    """A boolean (len(branches) * batch,) marking the rows of one branch."""
    return torch.tensor([b == name for b in branches]).repeat_interleave(batch)


class JointDenoiser:
    """SD3's MM-DiT: image and text tokens attend jointly; the pooled CLIP embedding and the timestep condition
    AdaLN. A flow-matching model: it predicts the velocity, and is guided in that space (engine/spaces.py).

    Branches in batch order [u, c, p], as StableDiffusion3Pipeline (u, c) and StableDiffusion3PAGPipeline (u, c, p)
    batch them; p is rows of the same batch marked for perturbed attention (engine/guiders/perturb.py)."""

    prediction_type = FLOW

    def __init__(self, transformer, cond: PromptCondition, uncond: PromptCondition | None):
        self.transformer = transformer
        self.cond = cond
        self.uncond = uncond

    def __call__(self, x, t, step: Step, with_uncond: bool, with_perturbed: bool = False):
        branches = ["u"] * with_uncond + ["c"] + ["p"] * with_perturbed
        conds = [self.uncond if b == "u" else self.cond for b in branches]
        x_in = torch.cat([x] * len(branches))  # (nB, C, h, w)
        timesteps = t.expand(x_in.shape[0])  # (nB,)
        extra = {"joint_attention_kwargs": {"perturb": _rows(branches, "p", len(x))}} if with_perturbed else {}
        out = self.transformer(hidden_states=x_in, timestep=timesteps,
                         encoder_hidden_states=torch.cat([c.embeds for c in conds]),  # (nB, L, D)
                         pooled_projections=torch.cat([c.pooled for c in conds]),  # (nB, P)
                         return_dict=False, **extra)[0]
        preds = dict(zip(branches, out.chunk(len(branches))))
        return preds["c"], preds.get("u"), preds.get("p")


class ClassDenoiser:
    """Class-conditional transformer (DiT): AdaLN-zero conditioning on a label id; the null class is an id too."""

    def __init__(self, transformer, labels: torch.Tensor, null_id: int, latent_channels: int,
                 prediction_type: str = "epsilon"):
        self.transformer = transformer
        self.labels = labels  # (B,)
        self.null_labels = torch.full_like(labels, null_id)  # (B,)
        self.latent_channels = latent_channels
        self.prediction_type = prediction_type

    def __call__(self, x, t, step: Step, with_uncond: bool, with_perturbed: bool = False):
        branches = ["c"] + ["u"] * with_uncond + ["p"] * with_perturbed  # cond first, as DiTPipeline batches it
        x_in = torch.cat([x] * len(branches))
        labels = torch.cat([self.null_labels if b == "u" else self.labels for b in branches])  # (nB,)
        timesteps = t[None].to(x.device) if t.ndim == 0 else t.to(x.device)
        timesteps = timesteps.expand(x_in.shape[0])  # (nB,)
        extra = {"cross_attention_kwargs": {"perturb": _rows(branches, "p", len(x))}} if with_perturbed else {}
        out = self.transformer(x_in, timestep=timesteps, class_labels=labels,
                         return_dict=False, **extra)[0]
        eps = out[:, : self.latent_channels]  # drop the learned variance channels, if any
        preds = dict(zip(branches, eps.chunk(len(branches))))
        return preds["c"], preds.get("u"), preds.get("p")
