"""How many threads CPU model work takes.

torch parallelises each op of a call with an OpenMP team, and every op ends at a barrier where the team's threads
wait for each other. On an idle machine that costs little; on a shared one (a free CPU Space, a busy laptop) the
operating system takes a core from one thread of the team now and then, and every op waits at its barrier for
that thread's next turn. A small model's forward runs hundreds of short ops, so one image's run grew from 0.4 s to
9-23 s with two other busy processes on a 2-core machine. The policy here:
- a small model (under SMALL_MODEL parameters) runs a whole batch on one OpenMP thread: no barriers, and its ops
  are too short for a team to gain much;
- a big batch of it is cut across the cores instead (parallel.py), one single-threaded worker a piece, and
  independent requests run side by side the same way: the workers meet once a call, not once an op;
- a big model keeps torch's own threads, whose ops are long enough that a barrier's wait matters little.
All model work runs on one thread of the engine's own (runner.py), so no other thread opens a team of its own.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

SMALL_MODEL = 50_000_000  # parameters: the lab's models have 1-20 million, SD 1.5's UNet 860 million


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """Within the block, this thread's torch ops run on one OpenMP thread (where `enabled`)."""
    if not enabled or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ThreadPolicy:
    """Whether a model's whole batches run on one OpenMP thread (`single`)."""

    def __init__(self, single: bool):
        self.single = single

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> "ThreadPolicy":
        return cls(sum(p.numel() for p in model.parameters()) < SMALL_MODEL)
