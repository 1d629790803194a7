"""Model work on one thread of the engine's own: the model thread.

PyTorch's CPU build parallelises each op with OpenMP, and libgomp keeps a team of worker threads per thread that
has opened a parallel region. Once two threads have teams, libgomp has more threads than cores and stops
spinning between regions, so every op on the 2-core CPU runs several times slower (`python -m engine threads`
measures it). A web server calls its handlers from whichever worker thread is free, so the engine hands every
piece of model work (loading included) to one thread it starts itself; no other thread then opens a team. Calls made on the model thread itself (a progress callback asking for a model)
run inline, and so do calls from the workers the model thread hands whole requests to (`delegated`).
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable, Iterator

_local = threading.local()  # .delegating: the model threads this thread works for, each waiting on it


IDLE_S = 2.0  # after this long without work the model thread runs its idle callback, once per quiet spell


def _serve(jobs: queue.SimpleQueue, on_idle: Callable[[], None] | None) -> None:
    """The model thread's loop: run jobs until the None that `close()` sends; `on_idle` after each quiet spell."""
    worked = False
    while True:
        try:
            job = jobs.get(timeout=IDLE_S) if on_idle is not None and worked else jobs.get()
        except queue.Empty:
            worked = False
            _quietly(on_idle)
            continue
        if job is None:
            return
        _run(*job)
        worked = True
        del job  # an idle thread must not keep its last call's engine alive


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # housekeeping (giving memory back) must never end the model thread
        logging.getLogger(__name__).warning("The model thread's idle work failed.", exc_info=True)


def _run(future: Future, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:  # handed to the waiting caller unchanged; the UI maps it to a sentence
        future.set_exception(exc)


class ModelThread:
    """`call(fn, ...)` runs fn on the model thread, started on first use, and returns its result or raises its
    exception, from any thread."""

    def __init__(self, name: str = "model", on_idle: Callable[[], None] | None = None):
        """on_idle: run on the model thread once it has had no work for IDLE_S seconds after some."""
        self.name = name
        self.on_idle = on_idle
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None

    @property
    def thread(self) -> threading.Thread | None:
        """The model thread, once started."""
        return self._thread

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        if threading.current_thread() is self._thread or self in getattr(_local, "delegating", ()):
            return fn(*args, **kwargs)
        future: Future = Future()
        with self._lock:
            self._start()
            self._jobs.put((future, fn, args, kwargs))
        return future.result()

    @contextmanager
    def delegated(self) -> Iterator[None]:
        """Within the block, this thread's calls to this model thread run inline: for the workers the model thread
        starts and waits on (engine/cpu/parallel.py, side_by_side), which would otherwise queue behind the model
        thread's own job. Another engine's model thread is not affected."""
        before = getattr(_local, "delegating", ())
        _local.delegating = (*before, self)
        try:
            yield
        finally:
            _local.delegating = before

    def close(self, wait: bool = False) -> None:
        """Let the thread finish the calls already queued and end, freeing its OpenMP team (once it has ended:
        `wait`); a later call starts a new thread."""
        with self._lock:
            thread = self._thread
            if self._jobs is not None:
                self._jobs.put(None)
            self._jobs, self._thread = None, None
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _start(self) -> None:
        if self._thread is None:
            self._jobs = queue.SimpleQueue()
            # The loop holds only the queue, never the engine, so an unused engine can be collected and close it.
            self._thread = threading.Thread(target=_serve, args=(self._jobs, self.on_idle), name=self.name,
                                            daemon=True)
            self._thread.start()


class Inline:
    """The same `call` on the caller's own thread: for measuring what the model thread saves."""

    thread = None

    @staticmethod
    def call(fn: Callable[..., Any], *args, **kwargs) -> Any:
        return fn(*args, **kwargs)

    @staticmethod
    @contextmanager
    def delegated() -> Iterator[None]:
        yield  # every call already runs on the caller's thread

    def close(self, wait: bool = False) -> None:
        pass
