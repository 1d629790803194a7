"""Timings of the engine: against the matching diffusers pipeline, by calling thread, and the default Compare grid
against the machine's matmul peak."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from .compare import compare
from .errors import EngineError
from .generate import Engine
from .guiders import GuidanceSettings
from .models.registry import default_model, resolve
from .meter import units
from .request import Request, check_request, evals_per_step
from .cpu.roofline import (Roofline, counting_samples, fast_convolution_note, matmul_peak, stolen_share,
                           unet_flops_per_sample)
from .models.schedulers import make_scheduler

BATCH = 15  # one row of the default compare grid: five guided scales times three seeds
GRID_PROMPT = "a large red circle on the left on a white background"
STEAL_IDLE = 0.02  # more of the CPU time than this taken by the hypervisor: the machine was not idle


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


def run_guidance(*, model: str | None, steps: int, runs: int, scale: float, methods: list[str],
                 prompt: str = "a large red circle on the left") -> int:
    """Each method at its default parameters against CFG, runs alternating: the measured time ratio beside the one
    its work explains (sample-evaluations per step plus the step's fixed overhead, engine/meter.py)."""
    engine = Engine()
    spec = resolve(model or default_model("text"), "text")
    base = _request(spec.name, prompt, steps, scale)
    reqs = {m: replace(base, guidance=GuidanceSettings(m, scale)) for m in methods}
    for req in reqs.values():
        check_request(req)
    print(_header(engine, spec, steps, scale, runs).replace("CFG scale", "scale"))
    cfg_units = units(steps, evals_per_step(base))
    for method, req in reqs.items():
        engine.generate(base), engine.generate(req)
        cfg_times, times = [], []
        for _ in range(runs):
            cfg_times.append(_seconds(lambda: engine.generate(base)))
            times.append(_seconds(lambda: engine.generate(req)))
        measured = statistics.median(times) / statistics.median(cfg_times)
        expected = units(steps, evals_per_step(req)) / cfg_units
        print(f"{method:>14}: median {statistics.median(times):.4f} s/image, CFG {statistics.median(cfg_times):.4f}; "
              f"{evals_per_step(req)} evaluations a step against CFG's {evals_per_step(base)}: time ratio "
              f"{measured:.3f}, its work explains {expected:.3f} (excess {measured / expected:.3f})", flush=True)
    return 0


def run_threads(*, model: str | None, steps: int, runs: int, scale: float,
                prompt: str = "a large red circle on the left") -> int:
    """Seconds per image by calling thread, in an order that keeps each case's OpenMP teams as labelled: the
    engine's model thread while no other thread has a team (what the app does); a BATCH-image compare row on it,
    split across the cores and whole (engine/cpu/parallel.py); then, the model thread ended, the main thread itself;
    a worker thread while the main thread's team is alive (a web server's handler without the model thread); and
    the model thread again beside the main thread's team (a script that also runs torch on its main thread)."""
    engine = Engine()
    spec = resolve(model or default_model("text"), "text")
    req = _request(spec.name, prompt, steps, scale)
    batch = replace(req, num_images=BATCH)
    print(_header(engine, spec, steps, scale, runs))
    print(_line("model thread (the engine's way)", _times(lambda: engine.generate(req), runs)), flush=True)
    times = _times(lambda: engine.generate(batch), runs)
    print(_line(f"batch {BATCH}, split, model thread", times, BATCH), flush=True)
    with engine.store.cpu.whole_batches():
        times = _times(lambda: engine.generate(batch), runs)
    print(_line(f"batch {BATCH}, whole, model thread", times, BATCH), flush=True)
    engine.runner.close(wait=True)  # its OpenMP team ends with it

    inline = Engine(engine.store, model_thread=False)
    print(_line("main thread, its team the only one", _times(lambda: inline.generate(req), runs)), flush=True)
    with ThreadPoolExecutor(1) as pool:
        times = pool.submit(_times, lambda: inline.generate(req), runs).result()
    print(_line("worker thread beside main's team", times), flush=True)
    again = Engine(engine.store)
    print(_line("model thread beside main's team", _times(lambda: again.generate(req), runs)), flush=True)
    return 0


def run_grid(*, model: str | None, steps: int, runs: int, prompt: str = GRID_PROMPT) -> Roofline:
    """The default Compare grid through the engine: median seconds, the UNet FLOPs it performed (FLOPs per sample
    times the samples evaluated), and that rate against a matmul peak measured on the model thread before the runs
    and after each one (the best of them: a measurement the hypervisor interrupts reads low), with the share of
    the CPU time each run lost to other guests of the host."""
    engine = Engine()
    spec = resolve(model or default_model("text"), "text")
    base = Request(model=spec.name, prompt=prompt, steps=steps, scheduler="ddim", seed=0)
    pipe = engine.loaded(spec)
    print(f"model {spec.name}, default Compare grid, {steps} DDIM steps, device {engine.device}, "
          f"{torch.get_num_threads()} threads, {runs} runs after a warm-up", flush=True)
    compare(engine, base)
    times, samples, stolen = [], [], []
    peaks = [engine.runner.call(matmul_peak)]
    for _ in range(runs):
        with counting_samples(pipe.unet) as sizes, stolen_share() as share:
            times.append(_seconds(lambda: compare(engine, base)))
        samples.append(sum(sizes))
        stolen += share
        peaks.append(engine.runner.call(matmul_peak))
    embeds = engine.runner.call(lambda: pipe.encode_prompt(prompt, engine.device, 1, False)[0])  # (1, L, D)
    per_sample = engine.runner.call(unet_flops_per_sample, pipe.unet, embeds)
    peak = max(peaks)
    result = Roofline(statistics.median(times), per_sample * samples[0], peak)
    print(f"grid: median {result.seconds:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times)})")
    if stolen:
        note = f" (above {STEAL_IDLE:.0%}: not an idle machine)" if max(stolen) > STEAL_IDLE else ""
        print(f"hypervisor steal during the runs: {', '.join(f'{s:.1%}' for s in stolen)} of the CPU time{note}")
    print(f"UNet work: {samples[0]} sample evaluations x {per_sample / 1e6:.2f} MFLOP = {result.flops / 1e9:.1f} GFLOP")
    note = engine.runner.call(fast_convolution_note, pipe.unet, embeds, result.fraction, per_sample)
    if note:
        print(note)
    print(f"achieved {result.flops_per_s / 1e9:.1f} GFLOP/s; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s "
          f"({torch.get_num_threads()} threads, the best of {len(peaks)} measurements: "
          f"{', '.join(f'{p / 1e9:.0f}' for p in peaks)}); the same work at the peak: {result.floor_s:.2f} s")
    print(f"grid roofline fraction: {result.fraction:.3f}")
    return result


def run_architectures(*, device: str = "cuda", steps: int = 25, runs: int = 3, names: tuple[str, ...] | None = None,
                      prompt: str = "a photo of an astronaut riding a horse on the moon") -> list[dict]:
    """The published SD1.5, SDXL and SD3.5 Medium architectures at their native sizes, random weights built from
    their configs (engine/models/architectures.py) and saved as folders: seconds per image through the engine (from the
    saved folder) and through the diffusers pipeline, peak GPU memory, and the engine/diffusers ratio. Without CUDA,
    or for a family the engine does not serve yet, one sentence instead."""
    import tempfile

    from .models.architectures import ARCHITECTURES, save
    from .models.loading import ModelStore, pick_dtype

    if device != "cuda" or not torch.cuda.is_available():
        print(f"No CUDA device here, so the {', '.join(names or ARCHITECTURES)} architectures are not timed: run "
              f"`python -m engine bench --device cuda` on a machine with an NVIDIA GPU.")
        return []
    engine = Engine(ModelStore(torch.device("cuda"), offload=False))
    print(f"{steps} steps, CFG, {runs} runs after a warm-up, {torch.cuda.get_device_name()}; random weights")
    rows = []
    for name in names or tuple(ARCHITECTURES):
        arch = ARCHITECTURES[name]
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as folder:
            save(name, Path(folder), pick_dtype(torch.device("cuda"), arch.family), "cuda")
            torch.cuda.empty_cache()
            rows.append(_time_architecture(engine, arch, folder, steps, runs, prompt))
            engine.store.clear()
            torch.cuda.empty_cache()
    return rows


def _time_architecture(engine: Engine, arch, folder: str, steps: int, runs: int, prompt: str) -> dict:
    """One row of run_architectures: engine and diffusers medians, peak memory of each, their ratio."""
    spec = resolve(folder, "text")
    req = Request(model=folder, prompt=prompt, steps=steps, scheduler=arch.scheduler, seed=0, height=arch.size,
                  width=arch.size, guidance=GuidanceSettings("cfg", arch.scale))
    pipe = engine.loaded(spec)
    pipe.scheduler = make_scheduler(arch.scheduler, pipe.scheduler.config)

    def run_pipeline():
        pipe(prompt, num_inference_steps=steps, guidance_scale=arch.scale, height=arch.size, width=arch.size,
             generator=torch.Generator("cpu").manual_seed(0))

    row = {"name": arch.name, "size": arch.size}
    row["diffusers_s"], row["diffusers_peak"] = _cuda_median(run_pipeline, runs)
    try:
        row["engine_s"], row["engine_peak"] = _cuda_median(lambda: engine.generate(req), runs)
    except Exception as exc:  # a family the engine does not serve yet: one sentence, the next architecture runs
        reason = str(exc).split("\n")[0][:200] if isinstance(exc, EngineError) else type(exc).__name__
        print(f"{arch.name:>12} {arch.size}px: diffusers {row['diffusers_s']:.3f} s/image, peak "
              f"{row['diffusers_peak'] / 2**30:.1f} GiB; the engine does not run this family yet ({reason}).")
        return row
    row["ratio"] = row["engine_s"] / row["diffusers_s"]
    print(f"{arch.name:>12} {arch.size}px: engine {row['engine_s']:.3f} s/image (peak "
          f"{row['engine_peak'] / 2**30:.1f} GiB), diffusers {row['diffusers_s']:.3f} s/image (peak "
          f"{row['diffusers_peak'] / 2**30:.1f} GiB), engine/diffusers time ratio {row['ratio']:.3f}", flush=True)
    return row


def _cuda_median(fn, runs: int) -> tuple[float, int]:
    """Median seconds of `runs` synchronised calls after a warm-up, and the peak memory allocated during them."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated()
