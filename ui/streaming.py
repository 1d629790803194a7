"""How a generation runs behind an endpoint: refused when over the work budget, then on a thread of its own while the
endpoint streams its live previews and Gradio's progress bar, until it ends or the page that started it presses
Stop."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable

import gradio as gr

from engine.errors import EngineError
from engine.generate import Stopped
from engine.meter import admit, run_context

MODEL_EVENT = dict(concurrency_id="model", concurrency_limit=1,  # every model-bound event shares one worker
                   trigger_mode="once")  # a page cannot queue a second run of an event while one is pending
MAX_WORK_S = 30.0  # seconds of work per request on the machine serving it; LAB_MAX_WORK_S overrides
LIVE_EVERY_S = 0.5  # how often a run shows its x0 estimate
POLL_S = 0.5  # how often a stream yields, so that Gradio can end the run of a client that left or pressed Stop;
# each yield is work for the server while the model runs (0.1 s cost text-to-image 0.3 s of its 1.5 s)


def check_budget(seconds: float, limit: float | None = None) -> None:
    """Admit a request whose estimate (engine/meter.py, Estimate) is within the per-request budget, or no bigger
    than the default request of its tab, which is always admitted however busy the machine; refuse the rest in one
    sentence saying what to reduce. The admitted request's runs stop between steps at twice its budget, keeping
    what they have (in_background)."""
    limit = float(os.environ.get("LAB_MAX_WORK_S", MAX_WORK_S)) if limit is None else limit
    default = getattr(seconds, "default_s", None)
    if seconds > limit and not (default is not None and seconds <= default * (1 + 1e-9)):
        slowdown = getattr(seconds, "slowdown", 1.0)
        busy = (f" (the machine is busy: runs take about {slowdown:.1f} times as long as when it is idle)"
                if slowdown >= 1.5 else "")
        raise EngineError(f"This request is about {seconds:.0f} s of work here{busy}; the limit is {limit:g} s per "
                          f"request: use fewer images, steps, seeds, scales or methods.")
    admit(max(limit, float(seconds)))


def progress_adapter(progress: gr.Progress, rows: int = 1, label: str = "denoising"):
    """Turn the engine's per-step callback dict into Gradio progress; `row` counts batched runs of a grid."""
    if progress is None:
        return None

    def report(info: dict, row: int = 0) -> None:
        total = info["num_steps"] * rows
        progress((row * info["num_steps"] + info["i"] + 1, total), desc=f"{label} step {info['i'] + 1}"
                 f"/{info['num_steps']}" + (f", row {row + 1}/{rows}" if rows > 1 else ""), unit="steps")

    return report


def both(*callbacks):
    """One step callback calling each of `callbacks` that is not None."""
    live = [c for c in callbacks if c is not None]
    return lambda info: [c(info) for c in live] and None


_RUNNING: dict[str, set[threading.Event]] = {}  # a page session's running runs, by their cancel flags
_RUNNING_LOCK = threading.Lock()


def in_background(work: Callable[[Callable[[dict], None], threading.Event], Any], request: gr.Request | None = None,
                  poll_s: float = POLL_S):
    """Run `work(report, cancel)` on a thread of its own (the engine's model thread does the model work) and yield
    ("live", images) for each live preview it reports, ("tick", None) every `poll_s` otherwise, then ("done",
    result). `cancel` is set, and the engine stops between denoising steps, when the consumer stops (Gradio closes
    the generator of a departed client, or of an API client that cancelled) or when the page session of `request`
    presses Stop (`stop_runs`); after Stop the stream says so in a notice and ends, leaving the last preview shown.
    The runs of a request admitted by `check_budget` stop at twice its budget; the result then holds what they had,
    and a warning says so."""
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    progress = {"i": -1, "num_steps": 0}

    def report(info: dict) -> None:
        progress.update(i=info.get("i", -1), num_steps=info.get("num_steps", 0))
        if "live" in info:
            events.put(("live", (info["i"], info["num_steps"], info["live"])))

    def target() -> None:
        try:
            events.put(("done", work(report, cancel)))
        except BaseException as exc:  # handed to the consumer, which maps it to a sentence
            events.put(("error", exc))

    session = getattr(request, "session_hash", None)
    if session:
        with _RUNNING_LOCK:
            _RUNNING.setdefault(session, set()).add(cancel)
    context, limit = run_context()  # the admitted request's limit, started, for its thread alone
    threading.Thread(target=context.run, args=(target,), name="request", daemon=True).start()
    try:
        while True:
            try:
                kind, value = events.get(timeout=poll_s)
            except queue.Empty:
                yield "tick", None
                continue
            if kind == "error" and isinstance(value, Stopped) and cancel.is_set():
                done, total = progress["i"] + 1, progress["num_steps"]
                gr.Info(f"Stopped after step {done} of {total}." if total else "Stopped.")
                return
            if kind == "error":
                raise value
            if kind == "done" and limit is not None and limit.note():
                gr.Warning(limit.note())
            yield kind, value
            if kind == "done":
                return
    finally:
        cancel.set()
        if session:
            with _RUNNING_LOCK:
                runs = _RUNNING.get(session, set())
                runs.discard(cancel)
                if not runs:
                    _RUNNING.pop(session, None)


def stop_runs(request: gr.Request) -> None:
    """Stop the runs of the page session that pressed Stop (never another session's)."""
    with _RUNNING_LOCK:
        runs = list(_RUNNING.get(getattr(request, "session_hash", None) or "", ()))
    for cancel in runs:
        cancel.set()


def stoppable(stop: gr.Button, *events) -> None:
    """Stop ends the running runs of the page that pressed it, within a denoising step: the run's cancel flag is
    set, the engine stops between steps, and the stream ends with a notice, keeping the last preview. It does not
    queue (it must not wait behind the run it stops), and other people's runs are untouched. Gradio's own
    `cancels=` is used only on ZeroGPU, where the run lives in a worker process the flag cannot reach: in the page
    it races with the stream's end and can leave every output saying Error."""
    from .zerogpu import on_zerogpu

    if on_zerogpu():
        stop.click(None, None, None, cancels=list(events), queue=False)
    else:
        stop.click(stop_runs, None, None, queue=False, api_visibility="private")
