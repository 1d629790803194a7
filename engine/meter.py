"""How long work takes here, learned from the runs served: seconds per unit of work, per model.

A unit is one UNet sample-evaluation; each denoising step also costs about three units of fixed overhead (scheduler,
guidance math, Python, the previews), which dominates small requests: on lab-sd a one-image step takes about 20 ms
and a 30-sample step about 130 ms, which fits 3 units of overhead and 4 ms a unit. The rate kept is the fastest of the recent runs: a run slowed
by a warm-up or by other work on the machine says little about what the machine can do.
"""

from __future__ import annotations

import threading
from collections import deque

# Before a model's first run: about what the project's models cost on a 2-core CPU, and on a GPU.
PRIOR_S = {"cpu": 0.005, "cuda": 0.002}
RECENT = 20
STEP_OVERHEAD = 3  # units


def units(steps: int, evals_per_step: int) -> int:
    """Units of work of a run: per step, its sample-evaluations plus the step's own overhead."""
    return steps * (evals_per_step + STEP_OVERHEAD)


class WorkMeter:
    """Per model name, the seconds per unit of the fastest of its recent runs."""

    def __init__(self) -> None:
        self._rates: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def seconds_per_unit(self, model: str, device: str = "cpu") -> float:
        with self._lock:
            recent = self._rates.get(model)
            return min(recent) if recent else PRIOR_S.get(device, PRIOR_S["cpu"])

    def record(self, model: str, work_units: int, seconds: float) -> None:
        if work_units > 0:
            with self._lock:
                self._rates.setdefault(model, deque(maxlen=RECENT)).append(seconds / work_units)
