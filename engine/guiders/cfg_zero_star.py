"""CFG-Zero*, Fan et al. (2025): CFG against the optimally scaled unconditional prediction, and zero-init."""

import torch

from .base import Guider, Param, dot
from .registry import register


def cfg_zero_star(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale) -> torch.Tensor:
    """alpha* u + s (c - alpha* u) with alpha* = <c, u> / <u, u> per sample."""
    u = pred_uncond.double()
    alpha = (dot(pred_cond, u) / dot(u, u).clamp_min(1e-30)).to(pred_uncond.dtype)
    scaled_uncond = alpha * pred_uncond
    return scaled_uncond + scale * (pred_cond - scaled_uncond)


ZERO_INIT = Param("zero_init_steps", 1, 0, 1000, "Zero-init steps", "steps whose prediction is zeroed", kind="int",
                  step=1, ui_range=(0, 10))


@register
class CFGZeroStar(Guider, name="cfg-zero-star", label="CFG-Zero*", params=(ZERO_INIT,), order=40,
                  plain_at_one=False, paper="Fan et al. (2025), CFG-Zero*"):
    """CFG-Zero*: the prediction is zero for the first `zero_init_steps` steps (at any scale, so a scale-1 cell is
    not the plain conditional run), then CFG against alpha* u."""

    def early(self, x, step):
        return torch.zeros_like(x) if step.index < self.values["zero_init_steps"] else None

    def guide(self, c, u, step):
        return cfg_zero_star(c, u, self.scale_like(c))
