"""Timings of the engine: against the matching diffusers pipeline, and by calling thread."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch
from diffusers import StableDiffusionPipeline

from .generate import Engine
from .guiders import GuidanceSettings
from .registry import default_model, resolve
from .request import Request
from .schedulers import make_scheduler

BATCH = 15  # one row of the default compare grid: five guided scales times three seeds


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _times(fn, runs: int) -> list[float]:
    """Seconds of `runs` calls after one warm-up call."""
    fn()
    return [_seconds(fn) for _ in range(runs)]


def _line(label: str, times: list[float], per: int = 1) -> str:
    runs = ", ".join(f"{t / per:.4f}" for t in times)
    return f"{label:>34}: median {statistics.median(times) / per:.4f} s/image  (runs: {runs})"


def _request(model: str, prompt: str, steps: int, scale: float) -> Request:
    return Request(model=model, prompt=prompt, steps=steps, scheduler="ddim", seed=0,
                   guidance=GuidanceSettings("cfg", scale))


def _header(engine: Engine, spec, steps: int, scale: float, runs: int) -> str:
    return (f"model {spec.name}, {steps} DDIM steps, CFG scale {scale:g}, device {engine.device}, "
            f"{torch.get_num_threads()} threads, {runs} runs after a warm-up")


def run_bench(*, model: str | None, steps: int, runs: int, scale: float, prompt: str = "a large red circle on the left"
              ) -> int:
    """Warm up both, then alternate runs and report medians; ends with the engine/diffusers time ratio. The
    pipeline runs on the engine's model thread too, so both get the same OpenMP conditions."""
    engine = Engine()
    spec = resolve(model or default_model("text"), "text")
    pipe = engine.loaded(spec)
    reference = StableDiffusionPipeline(**{k: v for k, v in pipe.components.items() if k != "image_encoder"})
    reference.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    req = _request(spec.name, prompt, steps, scale)

    def run_engine():
        engine.generate(req)

    def run_pipeline():
        engine.runner.call(reference, prompt, num_inference_steps=steps, guidance_scale=scale,
                           generator=torch.Generator("cpu").manual_seed(0))

    print(_header(engine, spec, steps, scale, runs))
    run_engine(), run_pipeline()
    engine_times, pipeline_times = [], []
    for _ in range(runs):
        engine_times.append(_seconds(run_engine))
        pipeline_times.append(_seconds(run_pipeline))
    e, p = statistics.median(engine_times), statistics.median(pipeline_times)
    print(f"engine:    median {e:.4f} s/image  (runs: {', '.join(f'{t:.4f}' for t in engine_times)})")
    print(f"diffusers: median {p:.4f} s/image  (runs: {', '.join(f'{t:.4f}' for t in pipeline_times)})")
    print(f"engine/diffusers time ratio: {e / p:.3f}")
    return 0


def run_threads(*, model: str | None, steps: int, runs: int, scale: float,
                prompt: str = "a large red circle on the left") -> int:
    """Seconds per image by calling thread, in an order that keeps each case's OpenMP teams as labelled: the
    engine's model thread while no other thread has a team (what the app does); a BATCH-image compare row on it,
    split across the cores and whole (engine/parallel.py); then, the model thread ended, the main thread itself;
    a worker thread while the main thread's team is alive (a web server's handler without the model thread); and
    the model thread again beside the main thread's team (a script that also runs torch on its main thread)."""
    engine = Engine()
    spec = resolve(model or default_model("text"), "text")
    req = _request(spec.name, prompt, steps, scale)
    batch = replace(req, num_images=BATCH)
    print(_header(engine, spec, steps, scale, runs))
    print(_line("model thread (the engine's way)", _times(lambda: engine.generate(req), runs)), flush=True)
    for split in (True, False):
        engine.splitter.enabled = split
        times = _times(lambda: engine.generate(batch), runs)
        print(_line(f"batch {BATCH}, {'split' if split else 'whole'}, model thread", times, BATCH), flush=True)
    engine.splitter.enabled = True
    engine.runner.close(wait=True)  # its OpenMP team ends with it

    inline = Engine(engine.store, model_thread=False)
    print(_line("main thread, its team the only one", _times(lambda: inline.generate(req), runs)), flush=True)
    with ThreadPoolExecutor(1) as pool:
        times = pool.submit(_times, lambda: inline.generate(req), runs).result()
    print(_line("worker thread beside main's team", times), flush=True)
    again = Engine(engine.store)
    print(_line("model thread beside main's team", _times(lambda: again.generate(req), runs)), flush=True)
    return 0
