"""Batch-parallel model calls on a multi-core CPU.

torch runs one call's ops across the cores with OpenMP, which scales poorly for a small network: the lab's UNet
costs 2.4 ms per sample at batch 30 on two cores, yet 1.8 ms when the batch is cut in two and each half runs on
its own thread with one OpenMP thread (`python -m engine threads` measures it). A `BatchSplitter` does that for big
batches on the CPU and runs everything else as a plain call. Small batches (one image with its unconditional
twin) gain nothing from the split, so they stay whole. The CPU path (engine/cpu/__init__.py) owns one splitter and
installs it around each model's forward (`SplitForward`), so callers call the model as usual.

Where there are several independent requests (the rows of a Compare grid), `side_by_side` runs them whole, one per
core, instead of cutting each one's batches: a worker then runs a 30-sample batch rather than 15 (13% less time
per sample for the lab's UNet), and the rows' guidance math and scheduler steps overlap rather than leaving the
other core idle (`python -m engine bench --grid`).
"""

from __future__ import annotations

import copy
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch

from .threads import ThreadPolicy, available_cores, one_thread

MIN_BATCH = 16  # below this a split costs more than it saves (measured: batch 8 is 13% slower split)


def _chunk(value: Any, batch: int, bounds: list[tuple[int, int]]) -> list[Any]:
    """The per-worker pieces of one argument: tensors with the batch as dim 0 are cut, lists and tuples of them
    are cut element-wise, so are the values of a dict (cross_attention_kwargs' row marks), anything else is shared."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return [value[lo:hi] for lo, hi in bounds]
    if isinstance(value, dict):
        pieces = {k: _chunk(v, batch, bounds) for k, v in value.items()}
        return [{k: p[i] for k, p in pieces.items()} for i in range(len(bounds))]
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


class BatchSplitter:
    """`splitter(fn, batch, *args, **kwargs)` is fn(*args, **kwargs), with the batch cut across the CPU's cores
    when that is faster; same result. One split runs at a time; a call arriving meanwhile runs whole."""

    def __init__(self, min_batch: int = MIN_BATCH, enabled: bool = True, cores: int | None = None):
        self.min_batch = min_batch
        self.enabled = enabled
        self.cores = cores or available_cores()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def bounds(self, batch: int, threads: int) -> list[tuple[int, int]]:
        """Near-equal (lo, hi) pieces, one per worker, each at least half the minimum batch."""
        workers = min(threads, batch // (self.min_batch // 2))
        step = -(-batch // workers)
        return [(lo, min(lo + step, batch)) for lo in range(0, batch, step)]

    def __call__(self, fn: Callable[..., Any], batch: int, *args, **kwargs) -> Any:
        return self.run(fn, batch, args, kwargs)

    def run(self, fn: Callable[..., Any], batch: int, args: tuple, kwargs: dict, single: bool = False) -> Any:
        """fn(*args, **kwargs), split where that is faster; a batch that runs whole runs on one OpenMP thread
        where `single` (threads.py)."""
        threads = self.cores
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        on_cpu = all(t.device.type == "cpu" for t in tensors)
        if not self.enabled or threads < 2 or batch < self.min_batch or not on_cpu:
            with one_thread(single and on_cpu):
                return fn(*args, **kwargs)
        if not self._lock.acquire(blocking=False):
            with one_thread(single):
                return fn(*args, **kwargs)
        try:
            return self._split(fn, batch, threads, args, kwargs)
        finally:
            self._lock.release()

    def side_by_side(self, jobs: list[Callable[[], Any]]) -> list[tuple[bool, Any]] | None:
        """Run the jobs at once, one per core, each with one OpenMP thread and with every batch inside it whole;
        [(True, result) or (False, exception)] in the jobs' order. None where that cannot help (one job, one core,
        or a split or other jobs already running): the caller then runs them one after another."""
        threads = self.cores
        if not self.enabled or threads < 2 or len(jobs) < 2 or not self._lock.acquire(blocking=False):
            return None
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def work(job):
            torch.set_num_threads(1)
            try:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    return True, job()
            except BaseException as exc:  # handed back to the caller, which decides what each failure means
                return False, exc

        try:  # the lock is held throughout: a batch arriving from a job finds it taken and runs whole
            futures = [self._executor(threads).submit(work, job) for job in jobs]
            return [f.result() for f in futures]
        finally:
            self._lock.release()

    def _split(self, fn, batch: int, threads: int, args: tuple, kwargs: dict) -> Any:
        bounds = self.bounds(batch, threads)
        arg_pieces = [_chunk(a, batch, bounds) for a in args]
        kw_pieces = {k: _chunk(v, batch, bounds) for k, v in kwargs.items()}
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def work(k: int):
            torch.set_num_threads(1)  # this worker's own OpenMP setting: one core each, no OpenMP team
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(*(p[k] for p in arg_pieces), **{name: p[k] for name, p in kw_pieces.items()})

        futures = [self._executor(threads).submit(work, k) for k in range(len(bounds))]
        return _join([f.result() for f in futures])

    def _executor(self, threads: int) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_size < threads:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="batch-split")
            self._pool_size = threads
        return self._pool


class SplitForward:
    """Installed as a model's `forward`: the call through the splitter, its batch read from the sample (the first
    positional argument, or `sample` / `hidden_states`). A small model's whole batches run on one OpenMP thread
    (threads.py). The module's hooks still run around it (they run in `Module.__call__`)."""

    def __init__(self, inner: Callable[..., Any], splitter: BatchSplitter, policy: ThreadPolicy):
        self.inner = inner
        self.splitter = splitter
        self.policy = policy
        self.__signature__ = inspect.signature(inner)  # pipelines inspect a model's forward

    @classmethod
    def install(cls, model: torch.nn.Module, splitter: BatchSplitter, single: bool = True) -> None:
        """Wrap the model's forward; `single` False keeps torch's threads for its whole batches."""
        if not isinstance(model.forward, cls):
            policy = ThreadPolicy.for_model(model) if single else ThreadPolicy(False)
            model.forward = cls(model.forward, splitter, policy)

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)  # what the inner forward offers (a graph forward's counters)

    def __deepcopy__(self, memo):
        return SplitForward(copy.deepcopy(self.inner, memo), self.splitter, self.policy)  # the copy's own model

    def __call__(self, *args, **kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        batch = sample.shape[0] if isinstance(sample, torch.Tensor) and sample.ndim > 0 else 0
        return self.splitter.run(self.inner, batch, args, kwargs, single=self.policy.single)
