"""Model work on one thread: the process's main thread.

PyTorch's CPU build parallelises each op with OpenMP, and libgomp keeps a team of worker threads per thread that
has opened a parallel region. Once two threads have teams, ops on either one run several times slower on the
2-core CPU (`python -m engine threads`): a 25-step lab-sd image takes 1.3 s from a server worker thread against
0.45 s on the main thread, and the main thread itself slows to 1.1 s while another thread that has run a parallel
conv is alive. A web server calls its handlers from worker threads, so `python app.py` hands each piece of model
work to the main thread, which serves them once the server is up; where the runner is not serving (tests, the
CLI, a notebook) calls run inline, on the caller's thread."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable


class MainThreadRunner:
    """`call(fn, ...)` runs fn on the thread inside `serve()` and returns its result (or raises its exception)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._serving = threading.Event()
        self._lock = threading.Lock()  # a call is queued only while serve() will still take it

    @property
    def serving(self) -> bool:
        return self._serving.is_set()

    def wait_serving(self, timeout: float | None = None) -> bool:
        """Block until serve() has started (for threads that must not run model work themselves)."""
        return self._serving.wait(timeout)

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        future: Future = Future()
        with self._lock:
            queued = self._serving.is_set() and threading.current_thread() is not threading.main_thread()
            if queued:
                self._jobs.put((future, fn, args, kwargs))
        return future.result() if queued else fn(*args, **kwargs)

    def serve(self, stop: threading.Event | None = None, poll_s: float = 0.2) -> None:
        """Run submitted calls on this (the main) thread until `stop` is set or the process is interrupted."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("MainThreadRunner.serve() must run on the main thread.")
        self._serving.set()
        try:
            while stop is None or not stop.is_set():
                try:
                    job = self._jobs.get(timeout=poll_s)
                except queue.Empty:
                    continue
                self._run(*job)
        finally:
            with self._lock:
                self._serving.clear()
            while not self._jobs.empty():  # calls that arrived as serving stopped still run, on this thread
                self._run(*self._jobs.get_nowait())

    @staticmethod
    def _run(future: Future, fn, args, kwargs) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the waiting caller, who maps it to a message
            future.set_exception(exc)
