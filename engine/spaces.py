"""Conversions between a model's prediction type, eps and the denoised estimate x0 at one step.

a is the step's cumulative alpha; for sigma-parametrised schedulers the model input x is already x / sqrt(1 + sigma^2)
and a = 1 / (1 + sigma^2), so the same formulas hold (../shared/brief/GUIDANCE.md, Conventions).
"""

from __future__ import annotations

import torch


def to_eps(pred: torch.Tensor, x: torch.Tensor, a: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Convert a model prediction to eps, in the variance-preserving space of the model input x."""
    if prediction_type == "epsilon":
        return pred
    a = a.to(x)
    if prediction_type == "v_prediction":
        return a.sqrt() * pred + (1 - a).sqrt() * x
    if prediction_type == "sample":
        return (x - a.sqrt() * pred) / (1 - a).sqrt()
    raise ValueError(f"Unsupported prediction type {prediction_type!r}.")


def from_eps(eps: torch.Tensor, x: torch.Tensor, a: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Convert eps back to the prediction type the scheduler expects."""
    if prediction_type == "epsilon":
        return eps
    a = a.to(x)
    if prediction_type == "v_prediction":
        return (eps - (1 - a).sqrt() * x) / a.sqrt()
    if prediction_type == "sample":
        return denoised(eps, x, a)
    raise ValueError(f"Unsupported prediction type {prediction_type!r}.")


def denoised(eps: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)."""
    a = a.to(x)
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def eps_from_x0(x0: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(a) x0) / sqrt(1 - a), the inverse of `denoised`."""
    a = a.to(x)
    return (x - a.sqrt() * x0) / (1 - a).sqrt()
