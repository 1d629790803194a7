"""Classifier-free guidance, Ho and Salimans (2021)."""

import torch

from .base import Guider
from .registry import register


def cfg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale) -> torch.Tensor:
    """u + s (c - u)."""
    # Written as the diffusers pipelines write it, so the engine matches them bit for bit.
    return pred_uncond + scale * (pred_cond - pred_uncond)


@register
class CFG(Guider, name="cfg", label="CFG", order=10,
          paper="Ho and Salimans (2021), Classifier-Free Diffusion Guidance"):
    """Classifier-free guidance: extrapolate from the unconditional prediction through the conditional one."""

    def guide(self, c, u, step):
        return cfg(c, u, self.scale_like(c))
