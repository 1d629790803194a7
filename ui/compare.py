"""Compare tab: an X/Y grid of guidance methods against scales at one seed, the measures per cell against scale with
95% intervals, and the methods compared again at the scales where their adherence matches CFG's."""

from __future__ import annotations

import functools
import math
import re

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure

from engine.compare import (DEFAULT_ROWS, DEFAULT_SCALES, REFERENCE, SWEEPS, compare, estimate_seconds,
                            estimate_sweep_seconds, match, parse_scales, parse_sweep_values, sweep)
from engine.errors import EngineError
from engine.generate import Engine, Stopped
from engine.guiders import GUIDERS, method_names
from engine.guiders.settings import compare_rows
from engine.models.registry import is_project_model
from engine.request import Request
from world.measures import cell_measures

from .controls import prompt_controls, run_buttons, sampling_controls, seed_row
from .endpoint import docstring, endpoint_inputs, parameter_names
from .errors import guarded
from .models import ModelChoices
from .results import save_output
from .streaming import MODEL_EVENT, check_budget, in_background, progress_adapter, stoppable
from .values import SEED_MAX, number, scheduler_choice, switch, text, whole
from .zerogpu import on_gpu

SCALE_AXIS = "guidance scale"
AXES = (SCALE_AXIS, *(label for label, _ in SWEEPS.values()))  # the X axis: the scale, or an SDXL metadata value
DEFAULT_SWEEP = "256, 512, 768, 1024"
DEFAULT_SWEEP_SCALE = 5.0
MEASURES = {"saturation": "Mean saturation", "clipped": "Fraction of clipped pixels",
            "diversity": "Diversity across seeds", "adherence": "Adherence (project's models only)"}
# The method presets' families, by the guiders' registered names (None: every guided method with a perturbed branch,
# as the guiders declare it); their titles and rows are the guiders' labels, and "All" is every Compare row.
FAMILIES = (("Classic", ("cfg", "perp-cfg", "apg")), ("Perturbation", None), ("Reshaping", ("tcfg", "mambo", "fdg")))
ALL = "All"
MAX_MORE_ROWS_CHARS = 2000
MORE_ROWS_EXAMPLE = "apg:eta=0:momentum=-0.75; pag:pag_scale=5:pag_layers=mid"  # the box's placeholder, the API's e.g.
DEFAULT_MATCH = 7.5
NO_JUDGE = ("Matching adherence needs an adherence measure, and the world's evaluator judges only the project's "
            "own models; pick one of them (lab-sd) to match.")


def presets() -> dict[str, list[str]]:
    """Each method preset's title ("Family: label / label / ...") and rows, from the guider registry; "All" last."""
    rows, found = compare_rows(), {}
    for family, names in FAMILIES:
        if names is None:
            names = [n for n in method_names() if GUIDERS[n].guided and GUIDERS[n].perturbation]
        labels = [GUIDERS[n].label for n in names if n in GUIDERS and GUIDERS[n].label in rows]
        found[f"{family}: {' / '.join(labels)}"] = labels
    return {**found, ALL: list(rows)}


def preset_rows(preset) -> list[str]:
    """The rows of a method preset, or one sentence for an unknown one."""
    known = presets()
    if not isinstance(preset, str) or preset not in known:
        raise EngineError(f"Unknown method preset; choose one of: {'; '.join(known)}.")
    return known[preset]


def split_rows(value) -> tuple[str, ...]:
    """Method specs from the "More rows" box, separated by ';' or new lines."""
    value = text("more rows", value)
    if len(value) > MAX_MORE_ROWS_CHARS:
        raise EngineError(f"The extra rows are {len(value)} characters long; the limit is {MAX_MORE_ROWS_CHARS}.")
    return tuple(part.strip() for part in re.split(r"[;\n]", value) if part.strip())


SUMMARY = ("Compare guidance methods against guidance scales: a labelled grid (one seed) and measures per cell over "
           "several seeds, with 95% bootstrap intervals, optionally at matched adherence.")
RETURNS = ("The grid as a PNG with its parameters, a plot of each measure against scale with interval bands, the "
           "measures per cell, the matched-adherence table and notes on rows that could not run.")


def parameter_docs() -> dict[str, str]:
    """What each /compare parameter means, for its docstring (the API page, MCP): the rows and the reference method
    named from the guider registry."""
    return {
        "prompt": "What the images should show, in words (at most 1000 characters).",
        "negative_prompt": "The unconditional branch's text ('' = the empty prompt).",
        "methods": f"Row labels, any of: {', '.join(compare_rows())}.",
        "scales": "Guidance scales for the columns, comma-separated, e.g. '1, 3, 7.5, 15, 30, 50'.",
        "seed": "Seed of the grid's images; the measures use seed, seed + 1, ...",
        "seeds": "Seeds per cell for the measures, 1 to 8.",
        "more_rows": f"Extra rows as method specs, 'method:param=value:...', separated by ';' or new lines, e.g. "
                     f"'{MORE_ROWS_EXAMPLE}'.",
        "match_adherence": f"Also compare every method at the scale where its adherence equals {REFERENCE}'s at "
                           f"match_scale (the project's models only, whose images the world can judge).",
        "match_scale": f"{REFERENCE}'s reference scale for matched adherence.",
        "x_axis": "The grid's X axis: 'guidance scale' (the columns are `scales`), or one SDXL control-metadata value "
                  "swept at guidance scale `sweep_scale`: 'original size', 'target size' or 'crop offset'.",
        "sweep_values": "The swept values, comma-separated whole numbers; v means v x v for a size, (v, v) for the "
                        "crop offset (SDXL models only).",
        "sweep_scale": "The guidance scale of every cell of a metadata sweep, 0 to 50.",
    }


def make_handler(engine: Engine, models: ModelChoices):
    """/compare: its docstring, for the API page and agents, is written below from parameter_docs()."""

    def compare_grid(prompt: str, negative_prompt: str = "", model: str | None = None,
                     methods: list[str] = list(DEFAULT_ROWS), scales: str = ", ".join(f"{s:g}" for s in DEFAULT_SCALES),
                     seed: int = 0, seeds: int = 3, steps: int = 25, scheduler: str = "auto", more_rows: str = "",
                     match_adherence: bool = False, match_scale: float = DEFAULT_MATCH,
                     x_axis: str = SCALE_AXIS, sweep_values: str = DEFAULT_SWEEP,
                     sweep_scale: float = DEFAULT_SWEEP_SCALE, progress=gr.Progress(), request: gr.Request = None):
        base = Request(model=models.pick(model, "text"), prompt=text("prompt", prompt),
                       negative_prompt=text("negative prompt", negative_prompt),
                       steps=whole("number of steps", steps, 1, 1000),
                       scheduler=scheduler_choice(models, model, scheduler),
                       seed=whole("seed", seed, 0, SEED_MAX))
        if not isinstance(methods, (list, tuple, type(None))):
            raise EngineError("The methods must be a list of row names.")
        rows = tuple(text("method name", m) for m in (methods or ())) + split_rows(more_rows)
        judge = base.prompt if is_project_model(base.model) else None  # the world judges only the lab's models
        matching = switch("matched-adherence switch", match_adherence)
        at = number("matching scale", match_scale) if matching else None
        scale_list, seeds = parse_scales(text("scales", scales)), whole("number of seeds per cell", seeds, 1, 8)
        at = at if judge is not None else None  # nothing to match without adherence
        axis = text("X axis", x_axis)
        if axis not in AXES:
            raise EngineError(f"The X axis must be one of: {', '.join(AXES)}.")
        if axis != SCALE_AXIS:
            yield from _sweep(axis, sweep_values, sweep_scale, base, rows, seeds, judge, matching, progress, request)
            return
        check_budget(estimate_seconds(engine, base, rows, scale_list, seeds, match_at=at))
        report = progress_adapter(progress, rows=max(1, len(rows) + (len(rows) + 1 if at is not None else 0)),
                                  label="grid")
        measure = functools.partial(cell_measures, prompt=judge)
        callback = (lambda r, i: report(i, r)) if report else None

        def work(_report, cancel):
            result = compare(engine, base, rows, scale_list, seeds=seeds, cancel=cancel, measure=measure,
                             callback=callback)
            notes = [f"{label} did not run: {why}" for label, why in result.failed.items()]
            matched = None
            if matching and judge is None:
                notes.append(NO_JUDGE)
            elif matching:
                try:
                    matched = match(engine, base, result, at, measure=measure, callback=callback, cancel=cancel)
                except Stopped:
                    raise
                except EngineError as exc:
                    notes.append(f"Matching adherence failed: {exc}")
            return result, matched, notes

        for kind, value in in_background(work, request):
            if kind == "done":
                yield outputs(*value)
            else:
                yield (gr.skip(),) * 5

    def _sweep(axis, values, at_scale, base, rows, seeds, judge, matching, progress, request):
        """The grid with an SDXL metadata value as its X axis, at one guidance scale."""
        field = next(name for name, (label, _) in SWEEPS.items() if label == axis)
        values = parse_sweep_values(text("sweep values", values))
        at_scale = number("sweep scale", at_scale)
        check_budget(estimate_sweep_seconds(engine, base, rows, field, values, at_scale, seeds))
        report = progress_adapter(progress, rows=max(1, len(rows) * len(values)), label="grid")
        callback = (lambda r, i: report(i, r)) if report else None
        measure = functools.partial(cell_measures, prompt=judge)

        def work(_report, cancel):
            result = sweep(engine, base, rows, field, values, at_scale, seeds=seeds, measure=measure,
                           callback=callback, cancel=cancel)
            notes = [f"{label} did not run: {why}" for label, why in result.failed.items()]
            if matching:
                notes.append("Matching adherence compares methods along the guidance scale; with a metadata "
                             "sweep it is not run.")
            return result, None, notes

        for kind, value in in_background(work, request):
            yield outputs(*value) if kind == "done" else (gr.skip(),) * 5

    def outputs(result, matched, notes):
        frame = cell_frame(result.measures)
        if matched is not None:
            notes = [f"{REFERENCE} at scale {matched.at:g} reaches a mean adherence of {matched.target:.3f}; each "
                     f"other method is shown at the scale where its adherence first reaches that (linear between "
                     f"the two columns around it), measured again on the same seeds.", *notes]
        return (save_output(result.grid, result.parameters),
                measures_figure(frame, None if matched is None else matched.target, result.x_key, result.x_title),
                frame.round(4), matched_frame(matched), "\n\n".join(notes))

    compare_grid.__doc__ = docstring(SUMMARY, parameter_names(compare_grid), RETURNS, parameter_docs())
    return guarded(compare_grid)


def cell_frame(measures: list[dict]) -> pd.DataFrame:
    """The per-cell table: the measures with their intervals, without the per-seed lists; columns no cell has a
    value for (adherence on a model the world cannot judge) left out."""
    frame = pd.DataFrame([{k: v for k, v in m.items() if k != "per_seed"} for m in measures])
    keep = [c for c in frame.columns if c in ("method", "scale") or frame[c].notna().any()]
    return frame[keep]
    return frame[keep]


def _with_interval(row: dict, name: str) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
    return f"{value:.3f}" if low is None else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def matched_frame(matched) -> pd.DataFrame:
    """One row per method at its matched scale: the measures as 'mean [95% interval]'."""
    columns = ["method", "matched scale", "adherence", "saturation", "clipped", "diversity", "note"]
    if matched is None:
        return pd.DataFrame(columns=columns)
    rows = []
    for row in matched.rows:
        scale = row["matched scale"]
        rows.append({"method": row["method"], "matched scale": "not reached" if scale is None else f"{scale:.3g}",
                     **{name: _with_interval(row, name) for name in ("adherence", "saturation", "clipped")},
                     "diversity": _with_interval(row, "diversity"), "note": row.get("note", "")})
    return pd.DataFrame(rows, columns=columns)


def measures_figure(frame: pd.DataFrame, target: float | None = None, x: str = "scale",
                    x_title: str = SCALE_AXIS) -> Figure:
    """One panel per measure against the grid's X axis (the scale, or a swept SDXL metadata value in column `x`): a
    line per method with its 95% interval shaded (diversity is one number per cell); the matched adherence as a
    dashed line."""
    figure = Figure(figsize=(10, 6.8), layout="constrained")
    figure.suptitle(f"Measures against {x_title} (shaded: 95% bootstrap interval over the seeds)", fontsize=11)
    axes = figure.subplots(2, 2, sharex=True).ravel()
    low, high = (frame[x].min(), frame[x].max()) if len(frame) else (0, 0)
    log = low > 0 and high > 4 * low  # scales like 1 ... 50 read better on a log axis
    for ax, (name, title) in zip(axes, MEASURES.items()):
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if name not in frame or frame[name].isna().all():
            ax.text(0.5, 0.5, "no values for this model", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
            continue
        for method, rows in frame.dropna(subset=[name]).groupby("method", sort=False):
            rows = rows.sort_values(x)
            line, = ax.plot(rows[x], rows[name], marker="o", markersize=3, label=method)
            if f"{name}_low" in rows:
                ax.fill_between(rows[x], rows[f"{name}_low"], rows[f"{name}_high"], color=line.get_color(),
                                alpha=0.15, linewidth=0)
        if name == "adherence" and target is not None:
            ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"{REFERENCE} reference")
    ticks = sorted(set(frame[x])) if len(frame) else []
    for ax in axes:
        if log:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel(x_title)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)), fontsize=9)
    return figure


def build(engine: Engine, models: ModelChoices) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            prompt, negative, model = prompt_controls(models)
            preset = gr.Radio(list(presets()), value=None, label="Method presets", info="sets the rows in one click")
            methods = gr.CheckboxGroup(list(compare_rows()), value=list(DEFAULT_ROWS), label="Rows: guidance methods")
            extra = gr.Textbox("", label="More rows", lines=2, max_length=MAX_MORE_ROWS_CHARS,
                               placeholder=MORE_ROWS_EXAMPLE,
                               info="method specs, method:param=value:..., separated by ';' or new lines")
            scales = gr.Textbox(", ".join(f"{s:g}" for s in DEFAULT_SCALES), label="Columns: guidance scales")
            with gr.Accordion("X axis: guidance scale or SDXL control metadata", open=False):
                x_axis = gr.Radio(list(AXES), value=SCALE_AXIS, label="X axis",
                                  info="a metadata value is swept at one guidance scale (SDXL models only)")
                with gr.Row():
                    sweep_values = gr.Textbox(DEFAULT_SWEEP, label="Swept values", max_lines=1,
                                              info="v means v x v for a size, (v, v) for the crop offset")
                    sweep_scale = gr.Number(DEFAULT_SWEEP_SCALE, label="Guidance scale of the sweep", minimum=0,
                                            maximum=50)
            seed, _ = seed_row("compare", num_images=False)
            seeds = gr.Slider(1, 8, value=3, step=1, label="Seeds per cell for the measures",
                              info="the grid shows the first; diversity needs two or more")
            with gr.Row():
                matching = gr.Checkbox(False, label=f"Match adherence to {REFERENCE} at scale R",
                                       info=f"then compare every method where its adherence equals {REFERENCE}'s")
                match_at = gr.Number(DEFAULT_MATCH, label="R", minimum=0, maximum=100)
            steps, scheduler = sampling_controls("compare", models.steps, flow=True)
            button, stop = run_buttons("compare", "Compare")
        with gr.Column(scale=3):
            grid = gr.Image(label="Grid (one seed; downloads as a PNG with its parameters)", type="filepath",
                            format="png", interactive=False, buttons=["download", "fullscreen"], height=560,
                            elem_id="compare-grid")
            plot = gr.Plot(label="Measures against scale", show_label=False, format="png")
            notes = gr.Markdown()
            matched = gr.Dataframe(label="At matched adherence", interactive=False)
            table = gr.Dataframe(label="Measures per cell", interactive=False)
    preset.change(guarded(preset_rows), preset, methods, api_name="compare_preset", api_visibility="undocumented", queue=False)
    handler = make_handler(engine, models)
    inputs = endpoint_inputs(handler, prompt=prompt, negative_prompt=negative, model=model, methods=methods,
                             scales=scales, seed=seed, seeds=seeds, steps=steps, scheduler=scheduler, more_rows=extra,
                             match_adherence=matching, match_scale=match_at, x_axis=x_axis,
                             sweep_values=sweep_values, sweep_scale=sweep_scale)
    handler = on_gpu(handler, models)  # spaces.GPU on ZeroGPU, else itself
    stoppable(stop, button.click(handler, inputs, [grid, plot, table, matched, notes], api_name="compare",
                                 **MODEL_EVENT))
