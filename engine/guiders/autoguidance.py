"""AutoGuidance, Karras et al. (2024, arXiv 2406.02507), "Guiding a diffusion model with a bad version of itself"."""

import torch

from .base import Guider
from .branch import WeakModelBranch
from .registry import register


def autoguidance(pred_cond: torch.Tensor, pred_weak: torch.Tensor, scale) -> torch.Tensor:
    """p + s (c - p): CFG's formula with the weak model's conditional prediction in place of u."""
    return pred_weak + scale * (pred_cond - pred_weak)


@register
class AutoGuidance(Guider, name="autoguidance", label="AutoGuidance", note="Karras et al. 2024: a weak model",
                   order=90, uses_uncond=False,
                   paper="Karras et al. (2024), Guiding a Diffusion Model with a Bad Version of Itself, "
                         "arXiv 2406.02507"):
    """The model's registered weak version (lab-sd-weak for lab-sd) with the same prompt replaces the unconditional
    branch; it runs as its own call, being another network. At scale 1 the result is c alone."""

    @classmethod
    def branch(cls, values):
        return WeakModelBranch(cls.label)

    @classmethod
    def perturbs(cls, values, scales):
        return not all(s == 1 for s in scales)

    def guide_perturbed(self, c, u, p, step):
        return autoguidance(c, p, self.scale_like(c))
