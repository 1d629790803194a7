"""Seconds per image for the engine and for the matching diffusers pipeline, at identical settings."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor

import torch
from diffusers import StableDiffusionPipeline

from . import parallel
from .generate import Engine
from .request import Request
from .guiders import GuidanceSettings
from .registry import default_model, resolve
from .schedulers import make_scheduler


BATCH = 15  # one row of the default compare grid: five guided scales times three seeds


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _request(model: str, prompt: str, steps: int, scale: float) -> Request:
    return Request(model=model, prompt=prompt, steps=steps, scheduler="ddim", seed=0,
                   guidance=GuidanceSettings("cfg", scale))


def run_bench(*, model: str | None, steps: int, runs: int, scale: float, prompt: str = "a large red circle on the left"
              ) -> int:
    """Warm up both, then alternate runs and report medians; ends with the engine/diffusers time ratio."""
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
        reference(prompt, num_inference_steps=steps, guidance_scale=scale,
                  generator=torch.Generator("cpu").manual_seed(0))

    print(f"model {spec.name}, {steps} DDIM steps, CFG scale {scale:g}, device {engine.device}, "
          f"{torch.get_num_threads()} threads, {runs} runs after a warm-up")
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
    """Seconds per image called from the main thread, from a worker thread inline, and from a worker thread
    through the main-thread runner (what `python app.py` does): the case for engine/runner.py. Then a batch of
    BATCH images (a compare row) with its UNet batch cut across the cores and in one call: engine/parallel.py."""
    engine = Engine()
    spec = resolve(model or default_model("text"), "text")
    req = _request(spec.name, prompt, steps, scale)
    engine.generate(req)  # warm-up
    print(f"model {spec.name}, {steps} DDIM steps, CFG scale {scale:g}, device {engine.device}, "
          f"{torch.get_num_threads()} threads, {runs} runs after a warm-up")
    timings = {}
    served: list[float] = []
    done = threading.Event()

    def client() -> None:
        try:
            engine.runner.wait_serving()
            served.extend(_seconds(lambda: engine.generate(req)) for _ in range(runs))
        finally:
            done.set()

    worker = threading.Thread(target=client)
    worker.start()
    engine.runner.serve(stop=done, poll_s=0.01)
    worker.join()
    timings["worker via runner"] = served
    timings["main thread"] = [_seconds(lambda: engine.generate(req)) for _ in range(runs)]
    with ThreadPoolExecutor(1) as pool:
        timings["worker thread"] = [pool.submit(_seconds, lambda: engine.generate(req)).result() for _ in range(runs)]
    batch = replace(req, num_images=BATCH)
    for label, split in ((f"batch {BATCH}, split", True), (f"batch {BATCH}, whole", False)):
        parallel.enabled = split
        try:
            engine.generate(batch)
            timings[label] = [_seconds(lambda: engine.generate(batch)) / BATCH for _ in range(runs)]
        finally:
            parallel.enabled = True
    for label, times in timings.items():
        print(f"{label:>18}: median {statistics.median(times):.4f} s/image  (runs: "
              f"{', '.join(f'{t:.4f}' for t in times)})")
    return 0
