"""Click-to-image times of the launched app through gradio_client: `python -m benchmarks.ui [--model-dir DIR]`.

Without --model-dir it uses the project's own models (assets/models); with it, the model folders under DIR
(e.g. the tests' tiny models). Reports the median of several runs after one warm-up run per endpoint.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
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
        _time_endpoints(Client(url, verbose=False), args)
    finally:
        demo.close()
    return 0


def _time_endpoints(client, args) -> None:
    text2img = lambda: client.predict(args.prompt, steps=args.steps, api_name="/text2img")  # noqa: E731
    compare = lambda: client.predict(args.prompt, steps=args.steps, api_name="/compare")  # noqa: E731
    t, runs = _median_seconds(text2img, args.runs)
    print(f"text2img (1 image, CFG 5):        median {t:.3f} s  budget {TEXT2IMG_BUDGET_S:g} s  "
          f"{'OK' if t < TEXT2IMG_BUDGET_S else 'OVER'}  (runs: {', '.join(f'{x:.3f}' for x in runs)})")
    c, runs = _median_seconds(compare, args.compare_runs)
    print(f"compare (4 methods x 6 scales x 3 seeds): median {c:.3f} s  budget {COMPARE_BUDGET_S:g} s  "
          f"{'OK' if c < COMPARE_BUDGET_S else 'OVER'}  (runs: {', '.join(f'{x:.3f}' for x in runs)})", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
