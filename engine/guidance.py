"""Guidance methods as pure tensor functions, as defined in shared/brief/GUIDANCE.md.

Conventions: `pred_cond` (c) and `pred_uncond` (u) have shape (B, ...); scale s = 1 means "conditional only",
s = 0 "unconditional only". Inner products and norms are per sample, in float64, and results keep the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

METHODS = ("none", "cfg", "perp-cfg", "apg", "cfg-zero-star")


def _dims(x: torch.Tensor) -> list[int]:
    return list(range(1, x.ndim))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product in float64, shaped to broadcast against `a`."""
    return (a.double() * b.double()).sum(dim=_dims(a), keepdim=True)


def cfg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance, Ho and Salimans (2021): u + s (c - u)."""
    # Written as the diffusers pipelines write it, so the engine matches them bit for bit.
    return pred_uncond + scale * (pred_cond - pred_uncond)


def perp_cfg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale: float, eta: float = 0.0) -> torch.Tensor:
    """Perp-CFG from the seed lecture notes: scale only the guidance perpendicular to the unconditional prediction."""
    diff = pred_cond - pred_uncond
    u = pred_uncond.double()
    along_u = _dot(diff, u) / _dot(u, u).clamp_min(1e-30) * u
    diff_par = along_u.to(diff.dtype)
    diff_perp = (diff.double() - along_u).to(diff.dtype)
    return pred_cond + (scale - 1) * (diff_perp + eta * diff_par)


@dataclass
class APGState:
    """The reverse-momentum running average APG keeps across the steps of one run."""

    momentum: float = 0.0
    buffer: MomentumBuffer | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.buffer = MomentumBuffer(self.momentum) if self.momentum != 0 else None


def apg(
    pred_cond: torch.Tensor,
    pred_uncond: torch.Tensor,
    scale: float,
    eta: float = 0.0,
    norm_threshold: float = 0.0,
    state: APGState | None = None,
) -> torch.Tensor:
    """Adaptive Projected Guidance, Sadat, Hilliges and Weber (2024, arXiv 2410.02416), the paper's formulation."""
    buffer = state.buffer if state is not None else None
    return normalized_guidance(
        pred_cond, pred_uncond, scale - 1, buffer, eta, norm_threshold, use_original_formulation=True
    )


def rescale(pred_guided: torch.Tensor, pred_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale, Lin, Liu, Li and Yang (2023), section 3.4: match the std of the conditional prediction."""
    return rescale_noise_cfg(pred_guided, pred_cond, guidance_rescale=phi)


def cfg_zero_star(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG-Zero*, Fan et al. (2025): CFG against the unconditional prediction scaled by its optimal alpha*."""
    u = pred_uncond.double()
    alpha = (_dot(pred_cond, u) / _dot(u, u).clamp_min(1e-30)).to(pred_uncond.dtype)
    scaled_uncond = alpha * pred_uncond
    return scaled_uncond + scale * (pred_cond - scaled_uncond)


def in_interval(index: int, num_steps: int, interval: tuple[float, float]) -> bool:
    """Kynkaanniemi et al. (2024): whether step `index` of `num_steps` lies inside the guidance interval.

    Step i spans the fractions [i / n, (i + 1) / n] of the run; it is guided when that span lies in [start, end],
    the same rule diffusers uses for ControlNet's control_guidance_start / end.
    """
    start, end = interval
    return not (index / num_steps < start or (index + 1) / num_steps > end)


@dataclass(frozen=True)
class GuidanceSettings:
    """Which guidance to apply and its parameters; `rescale` and `interval` modify any CFG-family method."""

    method: str = "cfg"
    scale: float | tuple[float, ...] = 7.5  # a tuple gives each image of the batch its own scale
    eta: float = 0.0
    momentum: float = 0.0
    norm_threshold: float = 0.0
    rescale: float = 0.0
    interval: tuple[float, float] = (0.0, 1.0)
    zero_init_steps: int = 1
    classifier_scale: float = 0.0

    def needs_uncond(self, index: int, num_steps: int) -> bool:
        """Whether this step needs the unconditional branch; where guidance cannot change c it is skipped."""
        if self.method == "none" or all(s == 1 for s in self.scales):
            return False
        return in_interval(index, num_steps, self.interval)

    @property
    def scales(self) -> tuple[float, ...]:
        return self.scale if isinstance(self.scale, tuple) else (self.scale,)

    def scale_tensor(self, like: torch.Tensor) -> float | torch.Tensor:
        """The scale, or per-image scales shaped (B, 1, ...) to broadcast against a prediction."""
        if not isinstance(self.scale, tuple):
            return self.scale
        return torch.tensor(self.scale, dtype=like.dtype, device=like.device).view(-1, *[1] * (like.ndim - 1))

    def zeroed(self, index: int) -> bool:
        """CFG-Zero*'s zero-init: the prediction is zero for the first `zero_init_steps` steps."""
        return self.method == "cfg-zero-star" and index < self.zero_init_steps


def combine(settings: GuidanceSettings, pred_cond: torch.Tensor, pred_uncond: torch.Tensor,
            state: APGState | None = None) -> torch.Tensor:
    """Apply the chosen CFG-family method, then rescale if asked."""
    s = settings.scale_tensor(pred_cond)
    if settings.method == "cfg":
        guided = cfg(pred_cond, pred_uncond, s)
    elif settings.method == "perp-cfg":
        guided = perp_cfg(pred_cond, pred_uncond, s, settings.eta)
    elif settings.method == "apg":
        guided = apg(pred_cond, pred_uncond, s, settings.eta, settings.norm_threshold, state)
    elif settings.method == "cfg-zero-star":
        guided = cfg_zero_star(pred_cond, pred_uncond, s)
    else:
        raise ValueError(f"Unknown guidance method {settings.method!r}; choose one of {', '.join(METHODS)}.")
    if settings.rescale > 0:
        guided = rescale(guided, pred_cond, settings.rescale)
    return guided
