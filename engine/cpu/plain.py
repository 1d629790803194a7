"""A switch for measuring: within `plain_forward()`, models called on this thread run diffusers' own forward and
torch's kernels (no frozen graph, no C loop), so that a tool watching torch's ops, such as FlopCounterMode, sees
every op of the model (the roofline's count, engine/cpu/roofline.py)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

_local = threading.local()


@contextmanager
def plain_forward() -> Iterator[None]:
    before = getattr(_local, "plain", False)
    _local.plain = True
    try:
        yield
    finally:
        _local.plain = before


def is_plain() -> bool:
    """Whether this thread is inside `plain_forward()`."""
    return getattr(_local, "plain", False)
