"""The one denoising loop every tab uses, and the wrappers that turn a denoiser into a guided model function.

A denoiser (engine/adapters.py) answers `denoiser(x, t, step, with_uncond) -> (pred_cond, pred_uncond | None)` in
the model's own prediction type. A model function answers `model_fn(x, t, step) -> eps`. Guidance is composed by
wrapping model functions (k-diffusion's habit), never by flags inside the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from .guidance import APGState, GuidanceSettings, combine


@dataclass(frozen=True)
class Step:
    """Where the loop is: step index, run length, timestep and cumulative alpha of this step."""

    index: int
    num_steps: int
    t: torch.Tensor
    alpha_prod: torch.Tensor  # 0-dim, float32


class Denoiser(Protocol):
    prediction_type: str

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: Step, with_uncond: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


ModelFn = Callable[[torch.Tensor, torch.Tensor, Step], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def alpha_prod_at(scheduler, t: torch.Tensor) -> torch.Tensor:
    """Cumulative alpha of the current step; sigma-parametrised schedulers give it as 1 / (1 + sigma^2)."""
    index = getattr(scheduler, "step_index", None)
    sigmas = getattr(scheduler, "sigmas", None)
    if index is not None and sigmas is not None:
        sigma = sigmas[index].float()
        return 1.0 / (1.0 + sigma**2)
    return scheduler.alphas_cumprod[int(round(float(t)))].float()


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


def guided_model(denoiser: Denoiser, settings: GuidanceSettings) -> ModelFn:
    """The model function for one run: conditional prediction, guided where the settings say so."""
    state = APGState(settings.momentum) if settings.method == "apg" else None
    ptype = denoiser.prediction_type

    def model_fn(x: torch.Tensor, t: torch.Tensor, step: Step) -> torch.Tensor:
        if settings.zeroed(step.index):
            return torch.zeros_like(x)
        pred_cond, pred_uncond = denoiser(x, t, step, settings.needs_uncond(step.index, step.num_steps))
        c = to_eps(pred_cond, x, step.alpha_prod, ptype)
        if pred_uncond is None:
            return c
        u = to_eps(pred_uncond, x, step.alpha_prod, ptype)
        if settings.method == "apg":
            # The APG paper guides the denoised estimate x0, not eps.
            x0 = combine(settings, denoised(c, x, step.alpha_prod), denoised(u, x, step.alpha_prod), state)
            a = step.alpha_prod.to(x)
            return (x - a.sqrt() * x0) / (1 - a).sqrt()
        return combine(settings, c, u, state)

    return model_fn


def class_log_prob_grad(classifier: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_x log p(y | x_t, t) and log p itself; the gradient flows through the classifier only."""
    with torch.enable_grad():
        x_in = x.detach().float().requires_grad_(True)
        timesteps = t.reshape(-1).expand(x.shape[0]).to(x.device)
        log_probs = torch.log_softmax(classifier(x_in, timesteps).float(), dim=-1)
        selected = log_probs[torch.arange(x.shape[0], device=x.device), labels]
        (grad,) = torch.autograd.grad(selected.sum(), x_in)
    return grad.to(x.dtype), selected.detach()


def with_classifier_guidance(model_fn: ModelFn, classifier: torch.nn.Module, labels: torch.Tensor,
                             scale: float, record: list | None = None) -> ModelFn:
    """Classifier guidance, Dhariwal and Nichol (2021), eps form: eps - s sqrt(1 - a_t) grad log p(y | x_t, t)."""

    def guided_fn(x: torch.Tensor, t: torch.Tensor, step: Step) -> torch.Tensor:
        eps = model_fn(x, t, step)
        grad, log_p = class_log_prob_grad(classifier, x, t, labels)
        if record is not None:
            record.append(log_p.exp().cpu())
        return eps - scale * (1 - step.alpha_prod.to(x)).sqrt() * grad

    return guided_fn


def sample(model_fn: ModelFn, scheduler, latents: torch.Tensor, *, prediction_type: str,
           step_kwargs: dict | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Run the scheduler's timesteps with one model function; report each step through `callback`."""
    step_kwargs = step_kwargs or {}
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(latents, t)
        step = Step(i, len(timesteps), t, alpha_prod_at(scheduler, t))
        eps = model_fn(x_in, t, step)
        pred = from_eps(eps, x_in, step.alpha_prod, prediction_type)
        latents = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
        if callback is not None:
            callback({"i": i, "num_steps": len(timesteps), "t": t, "x": latents,
                      "denoised": denoised(eps, x_in, step.alpha_prod)})
    return latents
