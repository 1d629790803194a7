"""Guidance interval, Kynkaanniemi et al. (2024): guide only a span of the run, a modifier of any method."""

from .base import Modifier, Param
from .registry import register


def in_interval(index: int, num_steps: int, interval: tuple[float, float]) -> bool:
    """Whether step `index` of `num_steps` lies inside the interval.

    Step i spans the fractions [i / n, (i + 1) / n] of the run; it is guided when that span lies in [start, end],
    the same rule diffusers uses for ControlNet's control_guidance_start / end.
    """
    start, end = interval
    return not (index / num_steps < start or (index + 1) / num_steps > end)


@register
class Interval(Modifier, name="interval", label="Interval", order=20, rows={},
               params=(Param("interval", (0.0, 1.0), 0.0, 1.0, "Guidance interval",
                             "the fractions of the run where guidance acts", kind="range"),),
               paper="Kynkaanniemi et al. (2024), Applying guidance in a limited interval"):
    """Outside the interval the step runs the conditional branch alone."""

    def needs_uncond(self, step):
        return self.inner.needs_uncond(step) and in_interval(step.index, step.num_steps, self.values["interval"])

    def needs_perturbed(self, step):
        return self.inner.needs_perturbed(step) and in_interval(step.index, step.num_steps, self.values["interval"])
