"""Scheduler names the lab offers, built fresh per run from the model's own scheduler config.

SCHEDULERS are the diffusion schedulers every UNet and DiT model takes; flow-matching models (SD3) take
FLOW_SCHEDULERS instead; a scheduler of the other kind is refused in one sentence (`check_scheduler`).
"""

from __future__ import annotations

from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler,
                       UniPCMultistepScheduler)

from ..errors import EngineError

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}
FLOW_SCHEDULERS = {"flow-euler": FlowMatchEulerDiscreteScheduler, "flow-heun": FlowMatchHeunDiscreteScheduler}
ALL_SCHEDULERS = {**SCHEDULERS, **FLOW_SCHEDULERS}

# The names AUTOMATIC1111 writes in PNG info, so its readers show a familiar sampler.
A1111_NAMES = {"ddim": "DDIM", "ddpm": "DDPM", "euler": "Euler", "euler-a": "Euler a", "dpm++2m": "DPM++ 2M",
               "unipc": "UniPC", "flow-euler": "Euler (flow)", "flow-heun": "Heun (flow)"}


def is_flow(scheduler) -> bool:
    """Whether a scheduler object integrates a flow-matching ODE (x_t = (1 - sigma) x0 + sigma noise)."""
    return isinstance(scheduler, (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler))


def family_schedulers(flow: bool) -> list[str]:
    """The scheduler names a flow-matching model, or any other model, can take."""
    return list(FLOW_SCHEDULERS if flow else SCHEDULERS)


def check_scheduler(name: str, flow: bool) -> None:
    """One sentence when the named scheduler does not fit the model's kind (flow matching or not)."""
    if (name in FLOW_SCHEDULERS) != flow:
        kind = "flow-matching" if flow else "diffusion (not flow-matching)"
        raise EngineError(f"This model needs a {kind} scheduler; '{name}' is not one: choose one of "
                          f"{', '.join(family_schedulers(flow))}.")


def make_scheduler(name: str, config):
    """A new scheduler of the named kind: schedulers keep per-run state, so runs never share one."""
    if name not in ALL_SCHEDULERS:
        raise EngineError(f"Unknown scheduler '{name}'; choose one of {', '.join(ALL_SCHEDULERS)}.")
    return ALL_SCHEDULERS[name].from_config(config)
