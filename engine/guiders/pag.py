"""Perturbed-Attention Guidance, Ahn et al. (2024, arXiv 2403.17377): guide away from the model with identity
self-attention in chosen layers, as diffusers' StableDiffusionPAGPipeline does."""

import torch

from .base import Guider, Param
from .branch import AttentionBranch
from .perturb import LAYER_PATTERN, AttentionPerturbation
from .registry import register


def pag(pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None, pred_perturbed: torch.Tensor, scale,
        pag_scale: float) -> torch.Tensor:
    """u + s (c - u) + s_p (c - p), or c + s_p (c - p) without the unconditional branch: diffusers'
    `_apply_perturbed_attention_guidance`, written as it writes it."""
    if pred_uncond is None:
        return pred_cond + pag_scale * (pred_cond - pred_perturbed)
    return pred_uncond + scale * (pred_cond - pred_uncond) + pag_scale * (pred_cond - pred_perturbed)


PAG_SCALE = Param("pag_scale", 3.0, 0.0, 50.0, "PAG scale", "weight of the guidance away from the perturbed "
                  "branch (diffusers' default 3)", step=0.25, ui_range=(0.0, 10.0))
PAG_LAYERS = Param("pag_layers", "mid", 0, 0, "PAG layers", "self-attention layers perturbed: mid, down.N, up.N, "
                   "blocks.N, comma-separated", kind="text", pattern=LAYER_PATTERN)


@register
class PAG(Guider, name="pag", label="PAG", note="Ahn et al. 2024: identity self-attention", order=70,
          params=(PAG_SCALE, PAG_LAYERS), plain_at_one=False,
          paper="Ahn et al. (2024), Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance, "
                "arXiv 2403.17377"):
    """PAG: a third branch, the conditional model with the chosen layers' attention map replaced by the identity,
    in the same batch; with --scale 1 PAG acts alone (no unconditional branch), as the pipeline does."""

    @classmethod
    def branch(cls, values):
        return AttentionBranch(cls.label, AttentionPerturbation("identity", values["pag_layers"]), PAG_LAYERS)

    @classmethod
    def perturbs(cls, values, scales):
        return values["pag_scale"] != 0

    def guide(self, c, u, step):  # a step without the perturbed branch (PAG scale 0): plain CFG
        return u + self.scale_like(c) * (c - u)

    def guide_perturbed(self, c, u, p, step):
        return pag(c, u, p, self.scale_like(c), self.values["pag_scale"])
