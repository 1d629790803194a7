"""MAMBO-G, magnitude-aware guidance (arXiv 2508.03442): CFG whose scale shrinks where the update is large.

The same quantity as diffusers' `guiders.magnitude_aware_guidance.mambo_guidance` (default formulation): that
function's `torch.norm(x, dim=[1, 2, 3])` raises on the pinned torch ("linalg.matrix_norm: dim must be a 2-tuple"),
so the norms here are `torch.linalg.vector_norm` over the same dimensions, in the input dtype as diffusers computes
them; the tests hold the two equal with diffusers' call patched to vector_norm, and against the formula.
"""

import torch

from .base import Guider, Param, dims
from .registry import register


def mambo(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale, alpha: float = 8.0) -> torch.Tensor:
    """u + s' (c - u), s' = 1 + (s - 1) exp(-alpha ||c - u|| / ||u||), norms per sample."""
    diff = pred_cond - pred_uncond
    norm = lambda x: torch.linalg.vector_norm(x, dim=dims(x), keepdim=True)  # noqa: E731  (B, 1, ...)
    ratio = norm(diff) / norm(pred_uncond)  # (B, 1, ...)
    final_scale = 1.0 + (scale - 1.0) * torch.exp(-alpha * ratio)  # (B, 1, ...)
    return pred_uncond + final_scale * diff


ALPHA = Param("alpha", 8.0, 0.0, 100.0, "MAMBO-G alpha",
              "how fast the scale falls toward 1 as ||c - u|| / ||u|| grows (0 = plain CFG; diffusers: 8)",
              step=0.5, ui_range=(0.0, 30.0))


@register
class MAMBO(Guider, name="mambo", label="MAMBO-G", note="2025: damps the scale where the update is large", order=55,
            params=(ALPHA,), paper="Magnitude-Aware Mitigation for Boosted Guidance (2025), arXiv 2508.03442"):
    """MAMBO-G: per sample, the scale moves from s toward 1 by exp(-alpha ratio); at s = 1 it is c."""

    def guide(self, c, u, step):
        return mambo(c, u, self.scale_like(c), self.values["alpha"])
