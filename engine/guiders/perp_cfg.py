"""Perp-CFG, from the lecture notes that seeded the project: scale only the guidance perpendicular to u."""

import torch

from .base import ETA, Guider, dot
from .registry import register


def perp_cfg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale, eta: float = 0.0) -> torch.Tensor:
    """c + (s - 1) (d_perp + eta d_par), d = c - u split along u; inner products per sample in float64."""
    diff = pred_cond - pred_uncond
    u = pred_uncond.double()
    along_u = dot(diff, u) / dot(u, u).clamp_min(1e-30) * u
    diff_par = along_u.to(diff.dtype)
    diff_perp = (diff.double() - along_u).to(diff.dtype)
    return pred_cond + (scale - 1) * (diff_perp + eta * diff_par)


@register
class PerpCFG(Guider, name="perp-cfg", label="Perp-CFG", note="lecture notes: projects against u", params=(ETA,),
              order=20, paper="the lecture notes that seeded the lab"):
    """Perp-CFG: no published paper uses the name; APG is the nearest, projecting against c instead."""

    def guide(self, c, u, step):
        return perp_cfg(c, u, self.scale_like(c), self.values["eta"])
