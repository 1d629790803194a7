"""Tangential CFG, Kwon et al. (2025, arXiv 2503.18137): diffusers' normalized_guidance (default formulation), with
the SVD of each 2-row matrix [c, u] done in closed form.

diffusers projects u on the first right-singular vector V1 of [c, u] (flattened, per sample) through
torch.linalg.svd. Here V1 comes from the 2x2 Gram matrix G = [[c.c, c.u], [c.u, u.u]]: if e is G's top unit
eigenvector (the first left-singular vector), V1 = e^T [c, u] / s1 and u.V1 = s1 e[1], so u' = (u.V1) V1 =
e[1] (e[0] c + e[1] u). It equals diffusers' function to float32 rounding (tests/engine/guiders/test_tcfg.py), and it
costs no LAPACK call: on the engine's model thread the SVD started an OpenMP team of its own each step, which made
a TCFG run 15% slower than CFG though it evaluates the same two branches (`python -m engine bench --guidance tcfg`).
"""

import torch

from .base import Guider
from .registry import register


def tangential_uncond(pred_cond: torch.Tensor, pred_uncond: torch.Tensor) -> torch.Tensor:
    """u' = u V1^T V1, V1 the first right-singular vector of [c, u] flattened, per sample (in float64, cast back)."""
    c, u = pred_cond.flatten(1).double(), pred_uncond.flatten(1).double()
    a, b, d = (c * c).sum(1), (c * u).sum(1), (u * u).sum(1)
    half = (a - d) / 2
    top = (a + d) / 2 + torch.sqrt(half * half + b * b)  # G's larger eigenvalue, s1^2
    # Its eigenvector, from whichever of the two equivalent formulas is better conditioned.
    e0, e1 = torch.where(a >= d, top - d, b), torch.where(a >= d, b, top - a)
    norm = torch.sqrt(e0 * e0 + e1 * e1)
    safe = norm > 0  # c = u = 0: u' = 0 whatever the direction
    e0, e1 = torch.where(safe, e0 / norm.clamp_min(1e-300), 1.0), torch.where(safe, e1 / norm.clamp_min(1e-300), 0.0)
    shape = (-1,) + (1,) * (pred_cond.ndim - 1)
    projected = (e1 * e0).reshape(shape) * pred_cond.double() + (e1 * e1).reshape(shape) * pred_uncond.double()
    return projected.to(pred_uncond.dtype)


def tcfg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale) -> torch.Tensor:
    """u' + s (c - u'). The projection is per sample and the scale only multiplies the shift, so a (B, 1, ...) tensor
    of per-image scales gives each image what its own call would."""
    uncond = tangential_uncond(pred_cond, pred_uncond)
    return uncond + scale * (pred_cond - uncond)


@register
class TCFG(Guider, name="tcfg", label="TCFG", note="Kwon et al. 2025: u on its main singular direction", order=50,
           paper="Kwon et al. (2025), TCFG: Tangential Damping Classifier-free Guidance, arXiv 2503.18137"):
    """TCFG: CFG against the unconditional prediction stripped of its component tangential to the pair [c, u];
    at scale 1 it is c (u' + (c - u')), so a scale-1 run is the plain conditional one."""

    def guide(self, c, u, step):
        return tcfg(c, u, self.scale_like(c))
