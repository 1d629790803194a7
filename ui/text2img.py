"""Text-to-image tab: prompt, guidance method with its own parameters, trajectory strip and cross-attention maps."""

from __future__ import annotations

import inspect

import gradio as gr

from engine.attention import generate_with_attention, heatmap
from engine.compare import grid
from engine.generate import Engine, Result
from engine.request import Request

from .controls import METADATA_FIELDS, metadata_controls, prompt_controls, run_buttons, sampling_controls, seed_row
from .endpoint import api_function, endpoint_inputs
from .guidance import guidance_api, guidance_controls, guidance_settings
from .models import ModelChoices
from .results import gallery, gallery_items, live_gallery, reproduce, reproduce_box, save_output
from .streaming import LIVE_EVERY_S, MODEL_EVENT, both, check_budget, in_background, progress_adapter, stoppable
from .values import SEED_MAX, pair, scheduler_choice, switch, text, whole
from .zerogpu import on_gpu

TRAJECTORY_POINTS = 5
DEFAULT_SCALE = 5.0


def preview_steps(steps: int) -> set[int]:
    """A few steps from first to last, evenly spread, where the x0 preview is decoded."""
    return {round(k * (steps - 1) / (TRAJECTORY_POINTS - 1)) for k in range(TRAJECTORY_POINTS)}


def trajectory_strip(result: Result) -> str | None:
    """The x0 previews as one labelled strip: a row per image, a column per previewed step."""
    if not result.previews:
        return None
    steps = [i for i, _ in result.previews]
    cells = [[images[n] for _, images in result.previews] for n in range(len(result.images))]
    picture = grid(cells, [f"seed {s}" for s in result.seeds], [f"step {i + 1}" for i in steps],
                   x_title="x0 estimate along the run")
    return save_output(picture, result.parameters[0])


def attention_items(result: Result, maps) -> list[tuple[str, str]]:
    return [(save_output(heatmap(result.images[0], weights), result.parameters[0]), token) for token, weights in maps]


def make_handler(engine: Engine, models: ModelChoices):
    """/text2img: the endpoint's parameters are the fixed ones below plus every guider's declared parameters."""
    leading, trailing = guidance_api(DEFAULT_SCALE)
    params = [("prompt", inspect.Parameter.empty), ("negative_prompt", ""), ("model", None), *leading,
              ("steps", 25), ("scheduler", "auto"), ("seed", 0), ("num_images", 1), ("trajectory", False),
              ("attention", False), *trailing, *((name, "") for name, *_ in METADATA_FIELDS), ("drop_t5", False)]

    def text2img(v: dict):
        req = Request(model=models.pick(v["model"], "text"), prompt=text("prompt", v["prompt"]),
                      negative_prompt=text("negative prompt", v["negative_prompt"]), guidance=guidance_settings(v),
                      steps=whole("number of steps", v["steps"], 1, 1000),
                      scheduler=scheduler_choice(models, v["model"], v["scheduler"]),
                      seed=whole("seed", v["seed"], 0, SEED_MAX),
                      num_images=whole("number of images", v["num_images"], 1, 16),
                      t5=False if switch("drop-T5 switch", v["drop_t5"]) else None,
                      **{name: pair(label.split(" (")[0].lower(), v[name]) for name, label, _ in METADATA_FIELDS})
        check_budget(engine.estimate_seconds(req))

        def work(report, cancel):
            kwargs = dict(callback=both(progress_adapter(v["progress"]), report), live_every_s=LIVE_EVERY_S,
                          preview_steps=preview_steps(req.steps) if v["trajectory"] else None, cancel=cancel)
            if v["attention"]:
                return generate_with_attention(engine, req, **kwargs)
            return engine.generate(req, **kwargs), []

        for kind, value in in_background(work, v["request"]):
            if kind == "done":
                result, maps = value
                yield gallery_items(result), reproduce(result), trajectory_strip(result), attention_items(result, maps)
            else:
                yield live_gallery(value), gr.skip(), gr.skip(), gr.skip()

    return api_function("text2img", "Generate images from a text prompt with the picked guidance method.",
                        params, text2img, returns="A gallery of PNGs (each with its parameters text), the command "
                        "that reproduces them, the x0-trajectory strip (or None) and cross-attention heat maps per "
                        "prompt token. While the run denoises, the endpoint streams the current x0 estimate.")


def build(engine: Engine, models: ModelChoices) -> None:
    """The tab's layout and its events; call inside a gr.Tab."""
    with gr.Row():
        with gr.Column(scale=2):
            prompt, negative, model = prompt_controls(models, negative_label="Negative prompt (the unconditional "
                                                      "branch)")
            g = guidance_controls("text2img", DEFAULT_SCALE)
            steps, scheduler = sampling_controls("text2img", models.steps, flow=True)
            seed, count = seed_row("text2img")
            metadata = metadata_controls("text2img")
            drop_t5 = gr.Checkbox(False, label="Drop T5 (SD3: CLIP-L and CLIP-G only)",
                                  info="see what the big text encoder adds; SD3 models only")
            with gr.Row():
                show_trajectory = gr.Checkbox(False, label="Show the denoising trajectory")
                show_attention = gr.Checkbox(False, label="Show attention maps",
                                             info="cross-attention; joint attention (image to text) on MM-DiT")
            button, stop = run_buttons("text2img")
        with gr.Column(scale=3):
            images = gallery(elem_id="text2img-images")
            trajectory = gr.Image(label="Denoising trajectory (x0 estimate)", type="filepath", format="png",
                                  interactive=False, elem_id="text2img-trajectory")
            attention = gallery("Attention per prompt token (image 1, last steps; joint attention on MM-DiT)")
            command = reproduce_box("text2img")
    handler = make_handler(engine, models)
    inputs = endpoint_inputs(handler, prompt=prompt, negative_prompt=negative, model=model, **g.by_name(),
                             steps=steps, scheduler=scheduler, seed=seed, num_images=count,
                             trajectory=show_trajectory, attention=show_attention, **metadata, drop_t5=drop_t5)
    handler = on_gpu(handler, models)  # spaces.GPU on ZeroGPU, else itself
    outputs = [images, command, trajectory, attention]
    stoppable(stop, button.click(handler, inputs, outputs, api_name="text2img", **MODEL_EVENT),
              prompt.submit(handler, inputs, outputs, api_name="text2img_submit", api_visibility="undocumented",
                            **MODEL_EVENT))
