"""Tangential CFG, Kwon et al. (2025, arXiv 2503.18137): diffusers' normalized_guidance, default formulation."""

import torch
from diffusers.guiders.tangential_classifier_free_guidance import normalized_guidance

from .base import Guider
from .registry import register


def tcfg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale) -> torch.Tensor:
    """u' + s (c - u'), u' = u V1^T V1 with V1 the first right-singular vector of [c, u] flattened, per sample."""
    # The SVD is batched per sample and the scale only multiplies the shift, so a (B, 1, ...) tensor of per-image
    # scales gives each image what its own call would.
    return normalized_guidance(pred_cond, pred_uncond, scale)


@register
class TCFG(Guider, name="tcfg", label="TCFG", note="Kwon et al. 2025: u on its main singular direction", order=50,
           paper="Kwon et al. (2025), TCFG: Tangential Damping Classifier-free Guidance, arXiv 2503.18137"):
    """TCFG: CFG against the unconditional prediction stripped of its component tangential to the pair [c, u];
    at scale 1 it is c (u' + (c - u')), so a scale-1 run is the plain conditional one."""

    def guide(self, c, u, step):
        return tcfg(c, u, self.scale_like(c))
