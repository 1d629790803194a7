"""Guidance rescale, Lin, Liu, Li and Yang (2023), section 3.4: a modifier of any guided method."""

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from .base import Modifier, Param
from .registry import register


def rescale(pred_guided: torch.Tensor, pred_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Match the std of the conditional prediction, mixed by phi: diffusers' rescale_noise_cfg."""
    return rescale_noise_cfg(pred_guided, pred_cond, guidance_rescale=phi)


@register
class Rescale(Modifier, name="rescale", label="Rescale", order=10,
              params=(Param("rescale", 0.0, 0.0, 1.0, "Guidance rescale", "Lin et al. 2023; 0 = off, 0.7 typical"),),
              rows={"CFG + rescale": {"method": "cfg", "rescale": 0.7}},
              paper="Lin, Liu, Li and Yang (2023), arXiv 2305.08891"):
    """Rescale the guided prediction toward the conditional one's std, in the method's own space."""

    def _guide(self, c, u, p, step):
        guided = self.inner._guide(c, u, p, step)
        phi = self.values["rescale"]
        return rescale(guided, c, phi) if phi > 0 else guided
