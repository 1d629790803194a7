"""How long work takes here, learned from the runs served: seconds per unit of work, per model.

A unit is one UNet sample-evaluation; each denoising step also costs about three units of fixed overhead (scheduler,
guidance math, Python, the previews), which dominates small requests: on lab-sd a one-image step takes about 20 ms
and a 30-sample step about 130 ms, which fits 3 units of overhead and 4 ms a unit. The rate kept is the fastest of the recent runs of a similar batch
size: a run slowed by a warm-up or by other work on the machine says little about what the machine can do. The time
a run spends in its step callback (live previews, progress) is not counted: it is the page's, not the model's.
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


def bucket(evals_per_step: int) -> int:
    """Runs are compared with runs of a similar batch: per unit, a one-image step costs about twice what a step of
    a 30-image batch does (small ops leave the cores idle). Buckets: 1-2, 3-4, 5-8, ... sample-evaluations."""
    return max(0, (max(1, evals_per_step) - 1).bit_length() - 1)


class WorkMeter:
    """Per model name and batch bucket, the seconds per unit of the fastest of its recent runs."""

    def __init__(self) -> None:
        self._rates: dict[tuple[str, int], deque[float]] = {}
        self._lock = threading.Lock()

    def seconds_per_unit(self, model: str, device: str = "cpu", evals_per_step: int = 1) -> float:
        """The rate of runs of this batch bucket; before the first such run, the lowest rate of any bucket of the
        model (bigger batches cost less per unit, so a request is never refused for want of a measurement of its
        own size; its run then gives one), or the device's prior."""
        with self._lock:
            own = self._rates.get((model, bucket(evals_per_step)))
            if own:
                return min(own)
            known = [min(r) for (name, _), r in self._rates.items() if name == model and r]
            return min(known) if known else PRIOR_S.get(device, PRIOR_S["cpu"])

    def record(self, model: str, work_units: int, seconds: float, evals_per_step: int = 1) -> None:
        if work_units > 0:
            with self._lock:
                key = (model, bucket(evals_per_step))
                self._rates.setdefault(key, deque(maxlen=RECENT)).append(seconds / work_units)
