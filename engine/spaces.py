"""Conversions between a model's prediction type, eps and the denoised estimate x0 at one step.

a is the step's cumulative alpha; for sigma-parametrised schedulers the model input x is already x / sqrt(1 + sigma^2)
and a = 1 / (1 + sigma^2), so the same formulas hold (docs/guidance.md, "The spaces").

Flow-matching models (SD3) predict the velocity v = noise - x0 of x_t = (1 - sigma) x0 + sigma noise. Their eps,
x + (1 - sigma) v, says nothing about v at sigma = 1, where every flow schedule starts, so they are guided in their
own velocity space: `to_eps` and `from_eps` leave a "flow" prediction as it is, and x0 is x - sigma v.
"""

from __future__ import annotations

import torch


FLOW = "flow"  # the prediction type of flow-matching models: the velocity noise - x0


def to_eps(pred: torch.Tensor, x: torch.Tensor, a: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Convert a model prediction to eps, in the variance-preserving space of the model input x (a flow model's
    velocity stays as it is: it is the space flow models are guided in)."""
    if prediction_type in ("epsilon", FLOW):
        return pred
    root_a, root_rest = _roots(a, x)
    if prediction_type == "v_prediction":
        return root_a * pred + root_rest * x
    if prediction_type == "sample":
        return (x - root_a * pred) / root_rest
    raise ValueError(f"Unsupported prediction type {prediction_type!r}.")


def from_eps(eps: torch.Tensor, x: torch.Tensor, a: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Convert eps back to the prediction type the scheduler expects."""
    if prediction_type in ("epsilon", FLOW):
        return eps
    root_a, root_rest = _roots(a, x)
    if prediction_type == "v_prediction":
        return (eps - root_rest * x) / root_a
    if prediction_type == "sample":
        return denoised(eps, x, a)
    raise ValueError(f"Unsupported prediction type {prediction_type!r}.")


def _roots(a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(a) and sqrt(1 - a) worked out in float32, then in x's dtype: in bfloat16 a late step's a (0.999) rounds
    to 1 and 1 - a to 0, which would divide by zero; in float32 this is the same as computing in x's dtype."""
    a = a.to(device=x.device, dtype=torch.float32)
    return a.sqrt().to(x.dtype), (1 - a).sqrt().to(x.dtype)


def denoised(eps: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)."""
    root_a, root_rest = _roots(a, x)
    return (x - root_rest * eps) / root_a


def eps_from_x0(x0: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(a) x0) / sqrt(1 - a), the inverse of `denoised`."""
    root_a, root_rest = _roots(a, x)
    return (x - root_a * x0) / root_rest


def x0_from_velocity(v: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Flow matching: x0 = x_t - sigma v."""
    return x - sigma.to(x) * v


def velocity_from_x0(x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Flow matching: v = (x_t - x0) / sigma, the inverse of `x0_from_velocity` (sigma > 0 at every model call)."""
    return (x - x0) / sigma.to(x)
