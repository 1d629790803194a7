"""The work budget's estimates against the runs they price: `python -m benchmarks.budget [--contend N]`.

For each request below, on the project's models, the engine's estimate (what the work budget admits or refuses;
engine/meter.py) is taken just before the run and compared with the run's wall time, in the engine as the app's
handlers call it (the Compare grids with the tab's per-cell measures). Each case runs once untimed first (its
shape's first run: tracing, and the slowdown it teaches the meter), then `--runs` times. An estimate is good when
the run takes between half and twice it. The table shows the request's work (its seconds here on an idle machine,
from the calibration) beside the estimate (the work times the slowdown its kind of run shows at present), and
whether the budget admits it now, and how many cores other processes kept busy meanwhile (a machine shared
with other work is not idle). `--contend N` measures again while N processes keep cores busy.
The calibration the estimates come from is read from the cache file, or measured first.

Cases: text-to-image 1 x 25 and 8 x 300 steps (CFG), class-conditional with classifier guidance, three stacked
ControlNets, the Compare tab's default grid and the largest grid the budget admits (as benchmarks/ui.py finds it).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from dataclasses import replace

from .ui import busy_processes

LIMIT_S = 30.0  # the app's default budget (ui/streaming.py, MAX_WORK_S)
PROMPT = "a large red circle on the left on a white background"
# Candidate grids, largest first: (scales, seeds) with as many of the Compare rows as 96 cells allow.
GRIDS = ((8, 8), (8, 6), (8, 4), (8, 3), (6, 3), (4, 3), (4, 2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each case")
    parser.add_argument("--contend", type=int, default=0, metavar="N",
                        help="measure again with N busy processes competing for the CPU")
    parser.add_argument("--only", help="comma-separated beginnings of case names (default: all)")
    args = parser.parse_args(argv)

    from engine.generate import Engine

    engine = Engine()
    started = time.perf_counter()
    cases = _cases(engine)
    print(f"device {engine.device}, {os.cpu_count()} CPUs; calibration and case set-up "
          f"{time.perf_counter() - started:.1f} s (cache file {engine.meter._file()}); budget {LIMIT_S:g} s", flush=True)
    if args.only:
        cases = {name: case for name, case in cases.items()
                 if any(name.startswith(prefix.strip()) for prefix in args.only.split(","))}
    rows = _measure(cases, args.runs, "idle")
    if args.contend:
        with busy_processes(args.contend):
            rows += _measure(cases, args.runs, f"{args.contend} busy")
    _table(rows)
    return 0


def _cases(engine) -> dict:
    """name -> (estimate(), run()) of each request, its models measured (or read from the cache file) here."""
    from PIL import Image

    from engine.compare import DEFAULT_ROWS, DEFAULT_SCALES, compare, estimate_seconds
    from engine.guiders import GuidanceSettings
    from engine.guiders.settings import compare_rows
    from engine.request import ControlSpec, Request
    from world.measures import cell_measures

    text = Request(prompt=PROMPT, guidance=GuidanceSettings("cfg", 5.0))
    sketch = Image.new("RGB", (64, 64), "white")
    controls = tuple(ControlSpec(sketch, kind) for kind in ("scribble", "canny", "pose"))
    single = {
        "text 1x25": text,
        "text 8x300": replace(text, num_images=8, steps=300),
        "class + classifier 1x25": Request(class_label="circle", classifier="lab-classifier",
                                           guidance=GuidanceSettings("cfg", 4.0, classifier_scale=10.0)),
        "3 controls 1x25": replace(text, controls=controls),
    }
    cases = {name: (functools.partial(engine.estimate_seconds, req), functools.partial(engine.generate, req))
             for name, req in single.items()}
    measure = functools.partial(cell_measures, prompt=PROMPT)

    def grid(rows, scales, seeds):
        return (functools.partial(estimate_seconds, engine, text, rows, scales, seeds),
                functools.partial(compare, engine, text, rows, scales, seeds=seeds, measure=measure))

    cases["default grid 4x6x3"] = grid(DEFAULT_ROWS, DEFAULT_SCALES, 3)
    every = tuple(compare_rows())
    for scales, seeds in GRIDS:
        rows, values = every[: 96 // scales], tuple(float(1 + 2 * i) for i in range(scales))
        estimate, run = grid(rows, values, seeds)
        if estimate() <= LIMIT_S:
            cases[f"largest grid {len(rows)}x{scales}x{seeds}"] = estimate, run
            break
    else:
        print(f"no grid of {GRIDS} is admitted")
    return cases


def _measure(cases: dict, runs: int, condition: str) -> list[tuple]:
    from engine.errors import EngineError
    from engine.meter import cpu_ticks, other_cores
    from ui.streaming import check_budget

    rows = []
    for name, (estimate, run) in cases.items():
        run()  # the shape's first run, untimed
        before = cpu_ticks()
        estimates, actuals = [], []
        for _ in range(runs):
            estimates.append(estimate())
            start = time.perf_counter()
            run()
            actuals.append(time.perf_counter() - start)
        try:
            check_budget(estimates[-1], LIMIT_S)
            admitted = "yes"
        except EngineError:
            admitted = "no"
        middle = statistics.median(float(e) for e in estimates)
        work = statistics.median(e.work_s for e in estimates)
        others = other_cores(before, cpu_ticks())
        row = (condition, name, work, middle, statistics.median(actuals), actuals, admitted, others)
        print(_line(row), flush=True)
        rows.append(row)
    return rows


def _line(row) -> str:
    condition, name, work, estimate, actual, actuals, admitted, others = row
    ratio = actual / estimate
    verdict = "yes" if 0.5 <= ratio <= 2.0 else "NO"
    return (f"| {condition} | {name} | {work:.2f} | {estimate:.2f} | {actual:.2f} | {ratio:.2f} | {verdict} | "
            f"{admitted} | {', '.join(f'{a:.2f}' for a in actuals)} | {others:.1f} |")


def _table(rows) -> None:
    print("\n| machine | request | work (s) | estimate (s) | actual (s, median) | actual / estimate | within 2x | "
          f"admitted ({LIMIT_S:g} s) | runs (s) | other processes (cores) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(_line(row))


if __name__ == "__main__":
    raise SystemExit(main())
