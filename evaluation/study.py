"""Guidance methods against scales over many prompts and seeds, with intervals, and compared at matched adherence.

    python -m evaluation.study --methods cfg,perp-cfg,apg:eta=0:momentum=-0.5 --scales 1,3,5,7.5,10 --seeds 4 \\
        --out study/ [--match-adherence 5]
    accelerate launch --num_processes N -m evaluation.study ...   (the cells split between processes)

Writes cells.csv (one row per method x scale x prompt x seed), summary.csv (means with 95% bootstrap intervals,
resampled by prompt), grid.png, plots.png, tables.md and, with --match-adherence, matched.csv (each method at the
scale matching CFG's adherence, and its paired difference from CFG there). The definitions: docs/guidance-study.md.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from engine.compare import grid, matched_scale, parse_scales
from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import GUIDERS, GuidanceSettings
from engine.guiders.settings import parse_method_spec, split_method_specs
from engine.models.loading import ModelStore
from engine.pnginfo import save_png
from engine.request import MAX_IMAGES, Request, check_request
from engine.models.schedulers import SCHEDULERS
from world import (HELD_OUT, IMAGE_SIZE, bootstrap, clipped_fraction, diversity, evaluate, paired_difference,
                   parse_caption, saturation)
from world.captions import WHERE

MEASURES = ("adherence", "saturation", "clipped", "diversity")
PER_IMAGE = MEASURES[:3]  # measured on each image; diversity is one value per prompt
SUCCESSES = ("adherence",)  # each image 0 or 1: intervals at least as wide as the exact binomial ones
CELL_COLUMNS = ("method", "params", "scale", "prompt", "seed", "adherence", "saturation", "clipped", "image")
REFINE = 4  # times a method's matched scale is measured and the match interpolated again


# 1. What the study compares.
@dataclass(frozen=True)
class Method:
    """One row of the study: a registered guider with the values given for its declared parameters."""

    label: str  # as the user wrote it, names normalised: "apg:eta=0:momentum=-0.5"
    settings: GuidanceSettings  # scale 1; each run replaces it

    @property
    def name(self) -> str:
        return self.settings.method

    @property
    def params(self) -> str:
        """Every parameter value a run of this method uses, as the PNG text writes them."""
        return " ".join(f"{p.name}={p.text(v)}" for p, v in self.settings.fields())

    @property
    def folder(self) -> str:
        return re.sub(r"[^A-Za-z0-9.=-]+", "_", self.label)


def parse_method(spec: str) -> Method:
    """'apg:eta=0:momentum=-0.5' -> Method (engine.guiders.settings.parse_method_spec), with one sentence for an
    unknown name, parameter or value."""
    return Method(*parse_method_spec(spec))


def parse_methods(text: str) -> list[Method]:
    methods = [parse_method(spec) for spec in split_method_specs(text)]
    if not methods:
        raise EngineError("Give at least one guidance method, like 'cfg,perp-cfg'.")
    seen: dict[tuple[str, str], str] = {}
    for m in methods:
        if (m.name, m.params) in seen:
            raise EngineError(f"The methods '{seen[m.name, m.params]}' and '{m.label}' are the same run; list it once.")
        seen[m.name, m.params] = m.label
    return methods


def held_out_captions() -> list[str]:
    """The world's held-out (colour, shape, position) combinations as captions, which training never showed."""
    return [f"a {c} {s} {WHERE[p][0]}" for c, s, p in sorted(HELD_OUT)]


def read_prompts(path: str | None) -> list[str]:
    if path is None:
        return held_out_captions()
    file = Path(path)
    if not file.is_file():
        raise EngineError(f"The prompts file '{path}' does not exist.")
    try:
        prompts = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise EngineError(f"The prompts file '{path}' is not text; write one prompt per line.") from None
    if not prompts:
        raise EngineError(f"The prompts file '{path}' holds no prompts; write one prompt per line.")
    return prompts


def judgeable(prompts: list[str], size: tuple[int, int]) -> str | None:
    """Why the world's evaluator cannot judge these images (None when it can): it knows its own 64x64 scenes and
    the captions of its grammar."""
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        return f"the model draws {size[0]}x{size[1]} images and the world's evaluator judges {IMAGE_SIZE}x{IMAGE_SIZE}"
    for prompt in prompts:
        parsed = parse_caption(prompt)
        if parsed.unknown_words or not parsed.objects:
            return f"the prompt '{prompt}' is not a caption of the world's vocabulary"
    return None


# 2. Running cells, batched, split between processes.
@dataclass(frozen=True)
class Cell:
    method: int  # index into the study's methods
    scale: float
    prompt: int
    seed: int


@dataclass(frozen=True)
class Job:
    """One engine call: images of one prompt, each serving the cells listed for it (a scale-1 conditional image
    serves every method that is plain at scale 1)."""

    method: int
    prompt: int
    images: tuple[tuple[float, int], ...]  # (scale, seed) per image
    cells: tuple[tuple[Cell, ...], ...]  # per image


@dataclass
class Study:
    engine: Engine
    model: str | None
    methods: list[Method]
    prompts: list[str]
    seeds: int
    steps: int
    scheduler: str
    batch: int
    out: Path
    judge: bool
    state: object  # accelerate's PartialState

    def request(self, method: Method, prompt: int, images) -> Request:
        return Request(model=self.model, prompt=self.prompts[prompt], steps=self.steps, scheduler=self.scheduler,
                       guidance=method.settings.replace(scale=tuple(s for s, _ in images)), num_images=len(images),
                       image_seeds=tuple(k for _, k in images))


def _shared(method: Method, scale: float) -> bool:
    """Whether the cell is the plain conditional run, the same image for every such method (as Compare shares it)."""
    return scale == 1 and GUIDERS[method.name].plain_at_one


def plan_jobs(methods: list[Method], cells: list[Cell], batch: int) -> list[Job]:
    """Engine calls for the cells, in a fixed order that does not depend on the number of processes, so every
    image comes from the same batch whichever process runs it."""
    first_plain = next((i for i, m in enumerate(methods) if _shared(m, 1.0)), None)
    groups: dict[tuple[int, int, bool], dict[tuple[float, int], list[Cell]]] = {}
    for cell in cells:
        shared = _shared(methods[cell.method], cell.scale)
        key = (first_plain if shared else cell.method, cell.prompt, shared)
        groups.setdefault(key, {}).setdefault((cell.scale, cell.seed), []).append(cell)
    jobs = []
    for (method, prompt, _), images in sorted(groups.items()):
        items = sorted(images.items())
        for first in range(0, len(items), batch):
            chunk = items[first:first + batch]
            jobs.append(Job(method, prompt, tuple(i for i, _ in chunk),
                            tuple(tuple(sorted(c, key=lambda c: c.method)) for _, c in chunk)))
    return jobs


def _image_path(study: Study, cell: Cell, folder: str) -> str:
    method = study.methods[cell.method]
    return f"{folder}/{cell.method:02d}-{method.folder}/s{cell.scale:g}-p{cell.prompt:03d}-seed{cell.seed}.png"


def run_job(study: Study, job: Job, folder: str) -> list[dict]:
    """Generate one job's images, save each cell's PNG with its own parameters text, and measure it."""
    req = study.request(study.methods[job.method], job.prompt, job.images)
    result = study.engine.generate(req)
    spec = study.engine.model_spec(req)
    parsed = parse_caption(study.prompts[job.prompt]) if study.judge else None
    rows = []
    for index, (image, cells) in enumerate(zip(result.images, job.cells)):
        array = np.asarray(image.convert("RGB"))
        measures = {"adherence": float(evaluate(array, parsed).all_correct) if parsed else None,
                    "saturation": saturation(array), "clipped": clipped_fraction(array)}
        for cell in cells:
            method = study.methods[cell.method]
            own = replace(req, guidance=method.settings.replace(scale=req.guidance.scale))
            text = result.parameters[index] if cell.method == job.method else \
                study.engine.parameters(own, spec, result.seeds[index], image.size, index)
            path = _image_path(study, cell, folder)
            (study.out / path).parent.mkdir(parents=True, exist_ok=True)
            save_png(image, study.out / path, text)
            rows.append({"cell": cell, "method": method.name, "params": method.params, "scale": cell.scale,
                         "prompt": study.prompts[cell.prompt], "seed": cell.seed, **measures, "image": path})
    return rows


def run_cells(study: Study, cells: list[Cell], folder: str, desc: str) -> list[dict]:
    """Every cell's row, computed by whichever process the split gives its job, gathered on every process."""
    from accelerate.utils import gather_object
    from tqdm import tqdm

    jobs = plan_jobs(study.methods, cells, study.batch)
    rows = []
    with study.state.split_between_processes(jobs) as mine:
        todo = sum(len(c) for j in mine for c in j.cells)
        label = desc if study.state.num_processes == 1 else f"{desc} (process 0's share)"
        with tqdm(total=todo, desc=label, unit="cell", disable=not study.state.is_main_process) as bar:
            for job in mine:
                rows += run_job(study, job, folder)
                bar.update(sum(len(c) for c in job.cells))
    if study.state.num_processes > 1:
        rows = gather_object(rows)
    return sorted(rows, key=lambda r: (r["cell"].method, r["cell"].scale, r["cell"].prompt, r["cell"].seed))


# 3. Statistics: the world's bootstrap, resampling whole prompts.
def _load(study: Study, path: str) -> np.ndarray:
    with Image.open(study.out / path) as image:
        return np.asarray(image.convert("RGB"))


def summarise(study: Study, rows: list[dict]) -> dict:
    """n and each measure with its interval over one method x scale's cells, resampling whole prompts (the images
    of one prompt go together); diversity across the seeds of each prompt, averaged over prompts."""
    by_prompt: dict[str, list[str]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r["image"])
    spread = [diversity([_load(study, p) for p in paths]) for paths in by_prompt.values()]
    stats = {"n": len(rows)}
    for name in MEASURES:
        prompts = None if name == "diversity" else [r["prompt"] for r in rows]
        values = spread if name == "diversity" else [r[name] for r in rows]
        stats[name], stats[f"{name}_low"], stats[f"{name}_high"] = bootstrap(values, prompts,
                                                                             binary=name in SUCCESSES)
    return stats


def summary_rows(study: Study, rows: list[dict], scales) -> list[dict]:
    out = []
    for i, method in enumerate(study.methods):
        for scale in scales:
            group = [r for r in rows if r["cell"].method == i and r["scale"] == scale]
            out.append({"method": method.name, "params": method.params, "label": method.label, "scale": scale,
                        **summarise(study, group)})
    return out


# 4. Matched adherence.
def paired_to(reference: list[dict], rows: list[dict]) -> dict:
    """Each per-image measure's difference from the reference's on the same (prompt, seed), with its interval
    resampling whole prompts: {name_diff, name_diff_low, name_diff_high}, Nones where a measure is not judged."""
    ref = {(r["prompt"], r["seed"]): r for r in reference}
    pairs = [(r, ref[r["prompt"], r["seed"]]) for r in rows if (r["prompt"], r["seed"]) in ref]
    out = {}
    for name in PER_IMAGE:
        judged = [(a, b) for a, b in pairs if a[name] is not None and b[name] is not None]
        diff = (None, None, None) if not judged else paired_difference(
            [a[name] for a, _ in judged], [b[name] for _, b in judged], [a["prompt"] for a, _ in judged],
            binary=name in SUCCESSES)
        out.update(zip((f"{name}_diff", f"{name}_diff_low", f"{name}_diff_high"), diff))
    return out


def find_matched(adherence_at: Callable[[float], float], curve: dict[float, float], target: float,
                 tolerance: float, rounds: int = REFINE) -> tuple[float | None, dict[float, float]]:
    """(scale, curve): the scale engine.compare.matched_scale interpolates on `curve` (scale -> mean adherence),
    rounded to 0.01 and measured there by `adherence_at`; while that misses `target` by more than `tolerance`,
    the point joins the curve and the match is interpolated again, at most `rounds` times (regula falsi on the
    rising part). None when the curve never reaches the target."""
    curve = dict(curve)
    scale = None
    for _ in range(rounds + 1):
        found = matched_scale(list(curve), list(curve.values()), target)
        if found is None:
            return None, curve
        scale = round(found, 2)
        curve[scale] = adherence_at(scale)
        if abs(curve[scale] - target) <= tolerance:
            break
    return scale, curve


def match_adherence(study: Study, rows: list[dict], scales, ref_scale: float) -> list[dict]:
    """CFG's adherence at `ref_scale`, then each other method at the scale where its adherence over the study's
    scales first rises through it (find_matched, within one image of CFG's), with its measures there over every
    prompt and seed (images under images/probes/) and their paired differences from CFG's."""
    cfg = next((i for i, m in enumerate(study.methods) if m.label == "cfg"), None)
    probes: dict[tuple[int, float], list[dict]] = {}
    for r in rows:
        probes.setdefault((r["cell"].method, r["scale"]), []).append(r)
    if cfg is None:  # run CFG's reference cells as one more row of the study
        study.methods.append(parse_method("cfg"))
        cfg = len(study.methods) - 1

    def probe(method: int, scale: float) -> list[dict]:
        if (method, scale) not in probes:
            cells = [Cell(method, scale, p, k) for p in range(len(study.prompts)) for k in range(study.seeds)]
            label = f"{study.methods[method].label} at {scale:g}"
            probes[method, scale] = run_cells(study, cells, "images/probes", label)
        return probes[method, scale]

    def mean_adherence(method: int, scale: float) -> float:
        return float(np.mean([r["adherence"] for r in probe(method, scale)]))

    reference = probe(cfg, ref_scale)
    target = mean_adherence(cfg, ref_scale)
    out = [{"method": "cfg", "params": study.methods[cfg].params, "label": "cfg (reference)", "scale": ref_scale,
            **summarise(study, reference), "note": f"reference: CFG at scale {ref_scale:g}"}]
    for i, method in enumerate(study.methods):
        if i == cfg:
            continue
        scale, curve = find_matched(lambda s: mean_adherence(i, s), {s: mean_adherence(i, s) for s in scales},
                                    target, 1 / len(reference) + 1e-9)
        tried = " ".join(f"{s:g}:{a:.3f}" for s, a in sorted(curve.items()))
        row = {"method": method.name, "params": method.params, "label": method.label}
        if scale is None:
            out.append({**row, "scale": None, "note": f"never reaches {target:.3f} within the scales; curve {tried}"})
            continue
        out.append({**row, "scale": scale, **summarise(study, probe(i, scale)),
                    **paired_to(reference, probe(i, scale)), "note": f"curve {tried}"})
    return out


# 5. Files and figures.
def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if not value.is_integer() or abs(value) >= 1e6 else f"{value:g}"
    return str(value)


def write_csv(path: Path, rows: list[dict], columns) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_text(row.get(c)) for c in columns])


def stat_columns(prefix=("method", "params", "scale", "n"), measures=MEASURES) -> list[str]:
    return [*prefix, *(f"{m}{part}" for m in measures for part in ("", "_low", "_high"))]


def matched_columns() -> list[str]:
    """matched.csv: the measures at the matched scale, then each per-image one's paired difference from CFG's."""
    return [*stat_columns(), *stat_columns((), [f"{m}_diff" for m in PER_IMAGE]), "note"]


def draw_grid(study: Study, rows: list[dict], scales, path: Path) -> None:
    """Methods as rows, scales as columns: the first prompt and seed, drawn as the Compare tab draws its grid."""
    first = {(r["cell"].method, r["scale"]): r["image"] for r in rows if r["cell"].prompt == 0 and r["seed"] == 0}
    cells = [[Image.open(study.out / first[i, s]).convert("RGB") for s in scales] for i in range(len(study.methods))]
    picture = grid(cells, [m.label for m in study.methods], [f"{s:g}" for s in scales], x_title="guidance scale",
                   y_title="method")
    picture.save(path)


def draw_plots(summary: list[dict], path: Path) -> None:
    """Each measure against scale, one line per method, with its 95% interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in MEASURES if any(r[m] is not None for r in summary)]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
    labels = list(dict.fromkeys(r["label"] for r in summary))
    for ax, name in zip(axes[0], shown):
        for label in labels:
            rows = [r for r in summary if r["label"] == label and r[name] is not None]
            x = [r["scale"] for r in rows]
            line, = ax.plot(x, [r[name] for r in rows], marker="o", label=label)
            ax.fill_between(x, [r[f"{name}_low"] for r in rows], [r[f"{name}_high"] for r in rows],
                            color=line.get_color(), alpha=0.2)
        ax.set_xlabel("guidance scale")
        ax.set_title(name)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


TABLE_MEASURES = (("adherence", "Adherence (all attributes right)", 1), ("saturation", "Mean saturation", 1),
                  ("clipped", "Clipped pixels (%)", 100), ("diversity", "Diversity across seeds", 1))


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _cell(row: dict, key: str, factor: float) -> str:
    if not row.get(key):
        return "-"
    mean, low, high = (float(row[f"{key}{part}"]) * factor for part in ("", "_low", "_high"))
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def write_tables(out: Path) -> Path:
    """tables.md in `out`, from its summary.csv (and matched.csv): per measure a table of methods x scales, each
    cell the mean and its 95% interval; then the matched-adherence table and each method's paired difference from
    CFG there. The study document quotes these."""
    summary = _read_csv(out / "summary.csv")
    scales = sorted({float(r["scale"]) for r in summary})
    methods = list(dict.fromkeys((r["method"], r["params"]) for r in summary))
    name = lambda m: f"{m[0]} ({m[1]})" if m[1] else m[0]  # noqa: E731
    lines = [f"Images per cell: {summary[0]['n']}. Each cell: mean [95% bootstrap interval, resampling prompts; "
             "exact at 0 and 1].", ""]
    for key, title, factor in TABLE_MEASURES:
        if not any(r.get(key) for r in summary):
            continue
        lines += [f"### {title}", "", "| method | " + " | ".join(f"s={s:g}" for s in scales) + " |",
                  "|---|" + "---|" * len(scales)]
        for m in methods:
            by_scale = {float(r["scale"]): r for r in summary if (r["method"], r["params"]) == m}
            lines.append(f"| {name(m)} | " + " | ".join(_cell(by_scale[s], key, factor) if s in by_scale else "-"
                                                      for s in scales) + " |")
        lines.append("")
    if (out / "matched.csv").is_file():
        diffs: list[str] = []
        lines += ["### At matched adherence", "", "| method | scale | adherence | saturation | clipped (%) | "
                  "diversity |", "|---|---|---|---|---|---|"]
        for r in _read_csv(out / "matched.csv"):
            label = f"{r['method']} ({r['params']})" if r.get("params") else r["method"]
            if not r.get("scale"):
                lines.append(f"| {label} | not reached | {r.get('note', '')} | | | |")
                continue
            lines.append(f"| {label} | {float(r['scale']):.2f} | {_cell(r, 'adherence', 1)} | "
                         f"{_cell(r, 'saturation', 1)} | {_cell(r, 'clipped', 100)} | {_cell(r, 'diversity', 1)} |")
            if r.get("saturation_diff"):  # not on the reference's own row
                diffs.append(f"| {label} | " + " | ".join(_cell(r, f"{key}_diff", factor) for key, _, factor in
                                                          TABLE_MEASURES[:3]) + " |")
        lines += ["", "### Minus CFG's, at matched adherence (paired by prompt and seed)", "",
                  "| method | adherence | saturation | clipped (%) |", "|---|---|---|---|", *diffs]
        lines.append("")
    path = out / "tables.md"
    path.write_text("\n".join(lines))
    return path


def print_matched(rows: list[dict]) -> None:
    print(f"{'method':<28} {'scale':>7} {'adherence [95% CI]':>24} {'saturation':>10} {'clipped':>8} "
          f"{'diversity':>9} {'saturation - CFG [95% CI]':>28}")
    for r in rows:
        if r["scale"] is None:
            print(f"{r['label']:<28} {'-':>7}  {r['note']}")
            continue
        ci = f"{r['adherence']:.3f} [{r['adherence_low']:.3f}, {r['adherence_high']:.3f}]"
        diff = f"{r['saturation_diff']:+.3f} [{r['saturation_diff_low']:+.3f}, {r['saturation_diff_high']:+.3f}]" \
            if r.get("saturation_diff") is not None else ""
        print(f"{r['label']:<28} {r['scale']:>7g} {ci:>24} {r['saturation']:>10.3f} {r['clipped']:>8.4f} "
              f"{r['diversity']:>9.3f} {diff:>28}")


# 6. The command.
class _Parser(argparse.ArgumentParser):
    """Errors as one sentence, no usage dump."""

    def error(self, message: str):
        raise EngineError(message[0].upper() + message[1:].rstrip(".") + ".")


def _whole(name: str, low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"the {name} must be a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"the {name} must be from {low} to {high}, not {value}")
        return value
    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the reference scale must be a number, not {text!r}") from None
    if not math.isfinite(value) or not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"the reference scale must be from 1 to 100, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m evaluation.study", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="registry name or local diffusers folder (default: the project's lab-sd)")
    parser.add_argument("--methods", default="cfg,perp-cfg,apg",
                        help="comma list, each optionally with parameters: cfg,apg:eta=0:momentum=-0.5")
    parser.add_argument("--scales", default="1,3,5,7.5,10,15", help="comma list of guidance scales")
    parser.add_argument("--prompts", help="text file, one prompt per line (default: the world's held-out captions)")
    parser.add_argument("--seeds", type=_whole("number of seeds", 1, 1000), default=4, help="seeds 0..K-1")
    parser.add_argument("--steps", type=_whole("number of steps", 1, 1000), default=25)
    parser.add_argument("--scheduler", choices=list(SCHEDULERS), default="ddim")
    parser.add_argument("--batch", type=_whole("batch", 1, MAX_IMAGES), default=MAX_IMAGES,
                        help="images per engine call")
    parser.add_argument("--match-adherence", type=_positive, metavar="REF",
                        help="compare each method at the scale matching CFG's adherence at scale REF (interpolated "
                        "on its adherence over --scales, then measured there)")
    parser.add_argument("--out", required=True, help="output folder")
    return parser


def _threads(state) -> None:
    """Split the CPU's cores between the processes, so they do not fight over them."""
    if state.device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // state.num_processes))


def prepare(args, state) -> tuple[Study, tuple[float, ...], str | None]:
    """Check every input before any model work; the study, its scales and why adherence is not judged (if not)."""
    methods = parse_methods(args.methods)
    scales = tuple(dict.fromkeys(parse_scales(args.scales)))
    prompts = read_prompts(args.prompts)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EngineError(f"The output '{out}' is a file; give a folder.")
    for method in methods:
        for prompt in prompts:
            check_request(Request(model=args.model, prompt=prompt, steps=args.steps, scheduler=args.scheduler,
                                  guidance=method.settings.replace(scale=scales), num_images=len(scales)))
    store = ModelStore(device=state.device) if state.num_processes > 1 else None
    engine = Engine(store)
    size = engine.native_size(args.model)
    why_not = judgeable(prompts, size)
    if args.match_adherence is not None and why_not:
        raise EngineError(f"Matching needs adherence, which the world's evaluator cannot judge here: {why_not}.")
    study = Study(engine, args.model, methods, prompts, args.seeds, args.steps, args.scheduler, args.batch, out,
                  why_not is None, state)
    return study, scales, why_not


def _one_cpu_process_note(state) -> None:
    """accelerate's `--cpu` starts a single process unless given an MPI hostfile; say so rather than let a run that
    was meant to be split go unnoticed."""
    if state.num_processes == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" \
            and "MASTER_PORT" in os.environ:
        print("note: accelerate launch --cpu starts one process without an MPI hostfile; this run uses one. For N "
              "CPU processes use accelerate launch --multi_gpu --num_processes N (with no GPU they run on the CPU).",
              file=sys.stderr)


def run(args) -> int:
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    _one_cpu_process_note(state)
    _threads(state)
    study, scales, why_not = prepare(args, state)
    main = state.is_main_process
    if main:
        study.out.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    started = time.perf_counter()
    cells = [Cell(i, s, p, k) for i in range(len(study.methods)) for s in scales
             for p in range(len(study.prompts)) for k in range(study.seeds)]
    rows = run_cells(study, cells, "images", "cells")
    elapsed = time.perf_counter() - started
    if main:
        write_csv(study.out / "cells.csv", rows, CELL_COLUMNS)
        summary = summary_rows(study, rows, scales)
        write_csv(study.out / "summary.csv", summary, stat_columns())
        draw_grid(study, rows, scales, study.out / "grid.png")
        draw_plots(summary, study.out / "plots.png")
        print(f"{len(rows)} cells in {elapsed:.1f} s ({len(rows) / elapsed:.2f} images/s, "
              f"{state.num_processes} process{'es' if state.num_processes > 1 else ''}); wrote {study.out}/")
        if why_not:
            print(f"Adherence is left empty: {why_not}.")
    if args.match_adherence is not None:
        matched = match_adherence(study, rows, scales, args.match_adherence)
        if main:
            write_csv(study.out / "matched.csv", matched, matched_columns())
            print_matched(matched)
    if main:
        write_tables(study.out)
    state.wait_for_everyone()
    return 0


def main(argv: list[str] | None = None) -> int:
    from engine.errors import one_sentence

    return one_sentence(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
