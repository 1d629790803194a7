"""Compare tab: an X/Y grid of guidance methods against scales at one seed, and measures per cell against scale."""

from __future__ import annotations

import functools

import gradio as gr
import pandas as pd

from engine.compare import DEFAULT_ROWS, DEFAULT_SCALES, compare, estimate_seconds, parse_scales
from engine.generate import Engine
from engine.guiders.settings import compare_rows
from engine.registry import is_project_model
from engine.request import Request
from world.measures import cell_measures

from .models import ModelChoices
from .shared import (MODEL_EVENT, SEED_MAX, check_budget, guarded, in_background, progress_adapter, prompt_controls,
                     sampling_controls, save_output, seed_row, text, whole)

MEASURES = {"saturation": "Mean saturation", "clipped": "Fraction of clipped pixels",
            "diversity": "Diversity across seeds", "adherence": "Adherence (project's models only)"}


def make_handler(engine: Engine, models: ModelChoices):
    @guarded
    def compare_grid(prompt: str, negative_prompt: str = "", model: str | None = None,
                     methods: list[str] = list(DEFAULT_ROWS), scales: str = ", ".join(f"{s:g}" for s in DEFAULT_SCALES),
                     seed: int = 0, seeds: int = 3, steps: int = 25, scheduler: str = "ddim", progress=gr.Progress()):
        base = Request(model=models.pick(model, "text"), prompt=text("prompt", prompt),
                       negative_prompt=text("negative prompt", negative_prompt),
                       steps=whole("number of steps", steps, 1, 1000), scheduler=scheduler,
                       seed=whole("seed", seed, 0, SEED_MAX))
        rows = tuple(text("method name", m) for m in (methods or ()))
        report = progress_adapter(progress, rows=max(1, len(rows)), label="grid")
        judge = base.prompt if is_project_model(base.model) else None  # the world judges only the lab's models
        scale_list, seeds = parse_scales(text("scales", scales)), whole("number of seeds per cell", seeds, 1, 8)
        check_budget(estimate_seconds(engine, base, rows, scale_list, seeds))

        def work(_report, cancel):
            return compare(engine, base, rows, scale_list, seeds=seeds, cancel=cancel,
                           measure=functools.partial(cell_measures, prompt=judge),
                           callback=(lambda r, i: report(i, r)) if report else None)

        for kind, result in in_background(work):
            if kind == "done":
                yield outputs(result)
            else:
                yield (gr.skip(),) * 6

    def outputs(result):
        frame = pd.DataFrame(result.measures)
        judged = frame.dropna(subset=["adherence"])  # the evaluator judges only the project's own models
        return save_output(result.grid, result.parameters), frame, frame, frame, judged, frame.round(4)

    return compare_grid


def build(engine: Engine, models: ModelChoices) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            prompt, negative, model = prompt_controls(models)
            methods = gr.CheckboxGroup(list(compare_rows()), value=list(DEFAULT_ROWS), label="Rows: guidance methods")
            scales = gr.Textbox(", ".join(f"{s:g}" for s in DEFAULT_SCALES), label="Columns: guidance scales")
            seed, _ = seed_row("compare", num_images=False)
            seeds = gr.Slider(1, 8, value=3, step=1, label="Seeds per cell for the measures",
                              info="the grid shows the first; diversity needs two or more")
            steps, scheduler = sampling_controls(models.steps)
            button = gr.Button("Compare", variant="primary", elem_id="compare-run")
        with gr.Column(scale=3):
            grid = gr.Image(label="Grid (one seed; downloads as a PNG with its parameters)", type="filepath",
                            format="png", interactive=False, buttons=["download", "fullscreen"],
                            elem_id="compare-grid")
            with gr.Row():
                plots = [gr.LinePlot(x="scale", y=key, color="method", title=title, height=220)
                         for key, title in list(MEASURES.items())[:2]]
            with gr.Row():
                plots += [gr.LinePlot(x="scale", y=key, color="method", title=title, height=220)
                          for key, title in list(MEASURES.items())[2:]]
            table = gr.Dataframe(label="Measures per cell", interactive=False)
    inputs = [prompt, negative, model, methods, scales, seed, seeds, steps, scheduler]
    button.click(make_handler(engine, models), inputs, [grid, *plots, table], api_name="compare", **MODEL_EVENT)
