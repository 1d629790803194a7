"""Adaptive Projected Guidance, Sadat, Hilliges and Weber (2024, arXiv 2410.02416), the paper's formulation."""

import torch
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

from .base import ETA, Guider, Param
from .registry import register


def apg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale, eta: float = 0.0, norm_threshold: float = 0.0,
        buffer: MomentumBuffer | None = None) -> torch.Tensor:
    """diffusers' normalized_guidance with use_original_formulation: c + (s - 1) (d_perp + eta d_par)."""
    return normalized_guidance(pred_cond, pred_uncond, scale - 1, buffer, eta, norm_threshold,
                               use_original_formulation=True)


MOMENTUM = Param("momentum", 0.0, -1.0, 0.0, "APG momentum", "reverse momentum beta (0 = off; the paper uses -0.5)",
                 ui_default=-0.5)
NORM_THRESHOLD = Param("norm_threshold", 0.0, 0.0, 1e4, "APG norm threshold",
                       "bound on the update's L2 norm (0 = off)", step=0.5, ui_range=(0.0, 50.0))


@register
class APG(Guider, name="apg", label="APG", note="Sadat et al. 2024: projects against c", order=30, space="x0",
          params=(ETA, MOMENTUM, NORM_THRESHOLD), paper="Sadat, Hilliges and Weber (2024), arXiv 2410.02416"):
    """APG in x0 space, as the paper recommends; the reverse-momentum average is kept across the run's steps."""

    def __init__(self, scale, **values):
        super().__init__(scale, **values)
        momentum = self.values["momentum"]
        self.buffer = MomentumBuffer(momentum) if momentum != 0 else None

    def guide(self, c, u, step):
        return apg(c, u, self.scale_like(c), self.values["eta"], self.values["norm_threshold"], self.buffer)
