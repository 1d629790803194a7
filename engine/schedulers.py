"""Scheduler names the lab offers, built fresh per run from the model's own scheduler config."""

from __future__ import annotations

from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, UniPCMultistepScheduler)

from .errors import EngineError

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}

# The names AUTOMATIC1111 writes in PNG info, so its readers show a familiar sampler.
A1111_NAMES = {"ddim": "DDIM", "ddpm": "DDPM", "euler": "Euler", "euler-a": "Euler a", "dpm++2m": "DPM++ 2M",
               "unipc": "UniPC"}


def make_scheduler(name: str, config):
    """A new scheduler of the named kind: schedulers keep per-run state, so runs never share one."""
    if name not in SCHEDULERS:
        raise EngineError(f"Unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}.")
    return SCHEDULERS[name].from_config(config)
