"""Batch-parallel model calls on a multi-core CPU.

torch runs one call's ops across the cores with OpenMP, which scales poorly for a small network: the lab's UNet
costs 2.4 ms per sample at batch 30 on two cores, yet 1.8 ms when the batch is cut in two and each half runs on
its own thread with one OpenMP thread (`python -m engine threads` measures it). `split_call` does that for big
batches on the CPU and runs everything else as a plain call. Small batches (one image with its unconditional
twin) gain nothing from the split, so they stay whole.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch

MIN_BATCH = 16  # below this a split costs more than it saves (measured: batch 8 is 13% slower split)

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
enabled = True


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size != workers:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool, _pool_size = ThreadPoolExecutor(workers, thread_name_prefix="batch-split"), workers
    return _pool


def _chunk(value: Any, batch: int, bounds: list[tuple[int, int]]) -> list[Any]:
    """The per-worker pieces of one argument: tensors with the batch as dim 0 are cut, lists and tuples of them
    are cut element-wise, anything else is shared."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return [value[lo:hi] for lo, hi in bounds]
    if isinstance(value, (list, tuple)) and value and any(isinstance(v, torch.Tensor) for v in value):
        pieces = [_chunk(v, batch, bounds) for v in value]
        return [type(value)(p[k] for p in pieces) for k in range(len(bounds))]
    return [value] * len(bounds)


def _join(outputs: list[Any]) -> Any:
    """Concatenate per-worker outputs along the batch, through tuples and lists (a ControlNet's residuals)."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, (list, tuple)):
        return type(first)(_join([o[k] for o in outputs]) for k in range(len(first)))
    return first


def split_call(fn: Callable[..., Any], batch: int, *args, **kwargs) -> Any:
    """fn(*args, **kwargs), with the batch cut across the CPU's cores when that is faster; same result."""
    threads = torch.get_num_threads()
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    if not enabled or threads < 2 or batch < MIN_BATCH or not on_cpu or not _lock.acquire(blocking=False):
        return fn(*args, **kwargs)
    try:
        workers = min(threads, batch // (MIN_BATCH // 2))
        step = -(-batch // workers)
        bounds = [(lo, min(lo + step, batch)) for lo in range(0, batch, step)]
        arg_pieces = [_chunk(a, batch, bounds) for a in args]
        kw_pieces = {k: _chunk(v, batch, bounds) for k, v in kwargs.items()}
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def work(k: int):
            torch.set_num_threads(1)  # this worker's own OpenMP setting: one core each
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(*(p[k] for p in arg_pieces), **{name: p[k] for name, p in kw_pieces.items()})

        futures = [_executor(len(bounds)).submit(work, k) for k in range(len(bounds))]
        outputs = [f.result() for f in futures]
    finally:
        torch.set_num_threads(threads)  # the workers set the process-wide default to 1; give it back
        _lock.release()
    return _join(outputs)
