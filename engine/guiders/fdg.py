"""Frequency-decoupled guidance, Sadat et al. (2025, arXiv 2506.19713): CFG with its own scale per frequency level.

The math of diffusers' FrequencyDecoupledGuidance.forward (default formulation, no rescale), built from diffusers'
own pieces: the Laplacian pyramid function its module imports (kornia's), `project` and `build_image_from_pyramid`.
Two levels as diffusers' default, listed high frequency first: [--fdg-high-scale, --scale]. A level whose scale is
1 keeps the conditional level itself, as diffusers intends (its forward, in 0.42.1, fails when exactly one level's
scale is 1: it reuses the previous level's tensor there).
"""

import math
from collections.abc import Sequence

import torch
from diffusers.guiders import frequency_decoupled_guidance as diffusers_fdg
from diffusers.guiders.frequency_decoupled_guidance import build_image_from_pyramid, project

from ..errors import EngineError
from .base import Guider, Param
from .registry import register


def fdg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scales: Sequence[float],
        parallel_weight: float = 1.0) -> torch.Tensor:
    """Per pyramid level (high frequency first): u + s (w d_par + d_perp), d = c - u split along c; then rebuilt."""
    if diffusers_fdg.build_laplacian_pyramid_func is None:
        raise EngineError("FDG needs the kornia package; install the project's requirements.")
    levels = len(scales)
    height, width = pred_cond.shape[-2:]
    if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
        raise EngineError(f"FDG's {levels}-level pyramid needs latent sides divisible by {2 ** (levels - 1)}; "
                          f"this latent is {height}x{width}.")
    # Both pyramids in one call (the pyramid works image by image): each call costs ~0.7 ms of small ops, as much
    # as the rest of a step's guidance math.
    batch = pred_cond.shape[0]
    both = diffusers_fdg.build_laplacian_pyramid_func(torch.cat([pred_cond, pred_uncond]), levels)
    cond_pyramid = [level[:batch] for level in both]  # [(B, C, H, W), (B, C, H/2, W/2)]
    uncond_pyramid = [level[batch:] for level in both]
    guided = []
    for cond, uncond, scale in zip(cond_pyramid, uncond_pyramid, scales):
        if math.isclose(scale, 1.0):
            guided.append(cond)
            continue
        shift = cond - uncond
        if not math.isclose(parallel_weight, 1.0):
            shift_parallel, shift_orthogonal = project(shift, cond)
            shift = parallel_weight * shift_parallel + shift_orthogonal
        guided.append(uncond + scale * shift)
    return build_image_from_pyramid(guided)  # (B, C, H, W)


HIGH_SCALE = Param("fdg_high_scale", 10.0, 0.0, 100.0, "FDG high-frequency scale",
                   "guidance scale of the high-frequency level; --scale is the low-frequency one "
                   "(diffusers' default and the paper's SDXL values: 10 and 5)", step=0.5, ui_range=(0.0, 30.0))
PARALLEL_WEIGHT = Param("fdg_parallel_weight", 1.0, 0.0, 1.0, "FDG parallel weight",
                        "weight of each level's update part parallel to c: 1 keeps it (plain CFG per level), "
                        "0 drops it")


@register
class FDG(Guider, name="fdg", label="FDG", note="Sadat et al. 2025: a scale per frequency level", order=60,
          plain_at_one=False, params=(HIGH_SCALE, PARALLEL_WEIGHT),
          paper="Sadat et al. (2025), Guidance in the Frequency Domain Enables High-Fidelity Sampling at Low CFG "
                "Scales, arXiv 2506.19713"):
    """FDG: --scale guides the low frequencies and fdg_high_scale the high ones, so a scale-1 run still guides
    (and runs the unconditional branch) unless the high-frequency scale is 1 too. Per-image scales apply the levels' math image by image."""

    @classmethod
    def unconditional(cls, values, scales):
        return cls.guided and not (all(s == 1 for s in scales) and values["fdg_high_scale"] == 1)

    def guide(self, c, u, step):
        high, weight = self.values["fdg_high_scale"], self.values["fdg_parallel_weight"]
        if len(set(self.scales)) == 1:
            return fdg(c, u, (high, self.scales[0]), weight)
        return torch.cat([fdg(c[i:i + 1], u[i:i + 1], (high, s), weight) for i, s in enumerate(self.scales)])
