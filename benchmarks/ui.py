"""Click-to-image times of the launched app through gradio_client: `python -m benchmarks.ui [--model-dir DIR]`.

Without --model-dir it uses the project's own models (assets/models); with it, the model folders under DIR
(e.g. the tests' tiny models). Reports the median of several runs after one warm-up run per endpoint.
`--contend N` measures again while N other processes keep the CPU busy (a shared machine), and prints the ratio of
each median to its idle one. `--memory` runs the largest Compare grid the work budget admits and prints the
process's memory before it, after it and each second for 10 s after.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

TEXT2IMG_BUDGET_S = 1.0
COMPARE_BUDGET_S = 8.0


def _median_seconds(call, runs: int) -> tuple[float, list[float]]:
    call()  # warm-up: model load and first-call overheads are not what a person waits for on later clicks
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="folder of model folders (default: the project's models)")
    parser.add_argument("--runs", type=int, default=5, help="timed text-to-image runs")
    parser.add_argument("--compare-runs", type=int, default=3, help="timed compare-grid runs")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps per image")
    parser.add_argument("--prompt", default="a large red circle on the left on a white background")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (OMP_NUM_THREADS); 1 is far faster "
                        "than 2 when another process keeps the cores busy")
    parser.add_argument("--contend", type=int, default=0, metavar="N",
                        help="measure again with N busy processes competing for the CPU")
    parser.add_argument("--memory", action="store_true", help="memory before and after the largest admitted grid")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read when torch is first imported, just below

    from gradio_client import Client

    import app
    from engine.generate import Engine
    from ui.models import folder_choices, registry_choices

    engine = Engine()
    models = folder_choices(args.model_dir) if args.model_dir else registry_choices(on_gpu=False)
    demo = app.create_app(engine, models)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options())
    try:
        print(f"model {models.default('text')}, {args.steps} DDIM steps, device {engine.device}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; medians after one warm-up, "
              f"through gradio_client against the app launched as `python app.py` launches it", flush=True)
        client = Client(url, verbose=False)
        idle = _time_endpoints(client, args)
        if args.contend:
            with busy_processes(args.contend):
                print(f"with {args.contend} busy processes competing for the {os.cpu_count()} CPUs:", flush=True)
                contended = _time_endpoints(client, args)
            print("contended / idle: " + ", ".join(f"{name} {contended[name] / idle[name]:.2f}x" for name in idle))
        if args.memory:
            _memory_after_largest_grid(client, args)
    finally:
        demo.close()
    return 0


def _busy(deadline: float) -> None:
    while time.monotonic() < deadline:
        pass


@contextmanager
def busy_processes(count: int, limit_s: float = 600.0):
    """`count` processes that each keep a core busy until the block ends (or `limit_s` passes)."""
    workers = [multiprocessing.get_context("spawn").Process(target=_busy, args=(time.monotonic() + limit_s,),
                                                            daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # the scheduler has them running
    try:
        yield
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()


def rss_mb() -> float:
    """This process's resident memory in MB (Linux)."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024


def _memory_after_largest_grid(client, args) -> None:
    """The biggest grid of these the budget admits: every method, as many scales and seeds as it takes."""
    from engine.guiders.settings import compare_rows

    rows = list(compare_rows())
    for scales, seeds in ((8, 8), (8, 6), (8, 4), (8, 3), (6, 3), (4, 3), (4, 2)):
        scale_text = ", ".join(f"{1 + 2 * i:g}" for i in range(scales))
        before = rss_mb()
        try:
            client.predict(args.prompt, methods=rows[: 96 // scales], scales=scale_text, seeds=seeds,
                           steps=args.steps, api_name="/compare")
        except Exception as exc:  # the budget refuses it: try a smaller one
            print(f"grid {len(rows[: 96 // scales])} rows x {scales} scales x {seeds} seeds refused: "
                  f"{str(exc)[:120]}")
            continue
        after = rss_mb()
        trail = []
        for _ in range(10):
            time.sleep(1.0)
            trail.append(rss_mb())
        print(f"largest admitted grid: {len(rows[: 96 // scales])} rows x {scales} scales x {seeds} seeds; RSS "
              f"{before:.0f} MB before, {after:.0f} MB after, then {', '.join(f'{m:.0f}' for m in trail)} MB "
              f"(10 s later {trail[-1] - before:+.0f} MB)", flush=True)
        return
    print("no grid was admitted")


def _time_endpoints(client, args) -> dict[str, float]:
    text2img = lambda: client.predict(args.prompt, steps=args.steps, api_name="/text2img")  # noqa: E731
    compare = lambda: client.predict(args.prompt, steps=args.steps, api_name="/compare")  # noqa: E731
    t, runs = _median_seconds(text2img, args.runs)
    print(f"text2img (1 image, CFG 5):        median {t:.3f} s  mean {statistics.fmean(runs):.3f} s  "
          f"budget {TEXT2IMG_BUDGET_S:g} s  "
          f"{'OK' if t < TEXT2IMG_BUDGET_S else 'OVER'}  (runs: {', '.join(f'{x:.3f}' for x in runs)})")
    c, runs = _median_seconds(compare, args.compare_runs)
    print(f"compare (4 methods x 6 scales x 3 seeds): median {c:.3f} s  budget {COMPARE_BUDGET_S:g} s  "
          f"{'OK' if c < COMPARE_BUDGET_S else 'OVER'}  (runs: {', '.join(f'{x:.3f}' for x in runs)})", flush=True)
    return {"text2img": t, "compare": c}


if __name__ == "__main__":
    raise SystemExit(main())
