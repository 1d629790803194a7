"""The one denoising loop every tab uses, and the wrappers that turn a denoiser into a guided model function.

A denoiser (engine/models/adapters.py) answers `denoiser(x, t, step, with_uncond, with_perturbed) -> (pred_cond,
pred_uncond | None, pred_perturbed | None)` in the model's own prediction type, all branches in one batch where one
model serves them. A model function answers `model_fn(x, t, step) -> eps` (a flow model's velocity: engine/spaces.py).
Guidance is composed by wrapping model functions (k-diffusion's habit), never by flags inside the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from .guiders import Guider
from .models.schedulers import is_flow
from .spaces import denoised, eps_from_x0, from_eps, to_eps, velocity_from_x0, x0_from_velocity


@dataclass(frozen=True)
class Step:
    """Where the loop is: step index, run length, timestep and cumulative alpha of this step; for flow-matching
    schedulers also sigma, and then the guided prediction is the velocity (engine/spaces.py)."""

    index: int
    num_steps: int
    t: torch.Tensor
    alpha_prod: torch.Tensor  # 0-dim, float32; for flow matching the equivalent (1 - s)^2 / ((1 - s)^2 + s^2)
    flow_sigma: torch.Tensor | None = None  # 0-dim: x_t = (1 - sigma) x0 + sigma noise

    def denoised(self, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0 from the guided prediction (eps, or a flow model's velocity) at this step."""
        if self.flow_sigma is not None:
            return x0_from_velocity(pred, x, self.flow_sigma)
        return denoised(pred, x, self.alpha_prod)

    def from_x0(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The guided prediction (eps, or velocity) that has x0 as its denoised estimate."""
        if self.flow_sigma is not None:
            return velocity_from_x0(x0, x, self.flow_sigma)
        return eps_from_x0(x0, x, self.alpha_prod)


class Denoiser(Protocol):
    prediction_type: str

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: Step, with_uncond: bool, with_perturbed: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]: ...


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


def flow_sigma_at(scheduler, t: torch.Tensor) -> torch.Tensor | None:
    """A flow-matching scheduler's sigma for the current step (its sigmas are x_t's noise fraction); None for the
    others."""
    if not is_flow(scheduler):
        return None
    index = scheduler.step_index if scheduler.step_index is not None else scheduler.index_for_timestep(t)
    return scheduler.sigmas[index].float()


def step_at(scheduler, i: int, num_steps: int, t: torch.Tensor) -> Step:
    sigma = flow_sigma_at(scheduler, t)
    if sigma is None:
        return Step(i, num_steps, t, alpha_prod_at(scheduler, t))
    return Step(i, num_steps, t, (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma**2), sigma)


def guided_model(denoiser: Denoiser, guider: Guider) -> ModelFn:
    """The model function for one run: the conditional prediction, guided where the guider says so."""
    ptype = denoiser.prediction_type

    def model_fn(x: torch.Tensor, t: torch.Tensor, step: Step) -> torch.Tensor:
        early = guider.early(x, step)
        if early is not None:
            return early
        preds = denoiser(x, t, step, guider.needs_uncond(step), guider.needs_perturbed(step))
        c, u, p = (None if v is None else to_eps(v, x, step.alpha_prod, ptype) for v in preds)
        if u is None and p is None:
            return c
        return guider.combine(c, u, x, step, p)

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
    scale_input = getattr(scheduler, "scale_model_input", None)  # flow-matching schedulers feed x_t as it is
    for i, t in enumerate(timesteps):
        x_in = latents if scale_input is None else scale_input(latents, t)
        step = step_at(scheduler, i, len(timesteps), t)
        eps = model_fn(x_in, t, step)
        pred = from_eps(eps, x_in, step.alpha_prod, prediction_type)
        latents = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
        if callback is not None:
            callback({"i": i, "num_steps": len(timesteps), "t": t, "x": latents, "denoised": step.denoised(eps, x_in)})
    return latents
