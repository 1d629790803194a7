"""The input rows several tabs share: prompt and model, SDXL's size and crop conditioning, sampling, seed and image
count, and the run and Stop buttons."""

from __future__ import annotations

import random

import gradio as gr

from engine.models.schedulers import ALL_SCHEDULERS, SCHEDULERS

from .inputs import SeedInput
from .values import SEED_MAX

DEFAULT_PROMPT = "a large red circle on the left on a white background"
# SDXL's size and crop conditioning in the text tab: (Request field, label, placeholder), positive then negative.
METADATA_FIELDS = (
    ("original_size", "Original size (W H)", "the image's size"),
    ("crop_coords", "Crop top-left (X Y)", "0 0"),
    ("target_size", "Target size (W H)", "the image's size"),
    ("negative_original_size", "Negative original size", "as above"),
    ("negative_crop_coords", "Negative crop top-left", "as above"),
    ("negative_target_size", "Negative target size", "as above"),
)


def prompt_controls(models, prompt: str = DEFAULT_PROMPT, negative_label: str = "Negative prompt"):
    """Prompt, negative prompt and the text-to-image model picker: the first inputs of the text-driven tabs."""
    prompt_box = gr.Textbox(prompt, label="Prompt", lines=2, max_length=1000)
    negative = gr.Textbox("", label=negative_label)
    model = gr.Dropdown(models.text, value=models.default("text"), label="Model", allow_custom_value=True)
    return prompt_box, negative, model


def metadata_controls(prefix: str) -> dict[str, gr.Textbox]:
    """The "Control metadata (SDXL)" group: one box per micro-conditioning pair (empty: diffusers' default)."""
    boxes = {}
    with gr.Accordion("Control metadata (SDXL)", open=False, elem_id=f"{prefix}-metadata"):
        gr.Markdown("These condition *how* SDXL draws the image (the size and crop its training photos had), not "
                    "*what* it shows. Two whole numbers each; empty keeps diffusers' default. SDXL models only.")
        for row in (METADATA_FIELDS[:3], METADATA_FIELDS[3:]):
            with gr.Row():
                for name, label, placeholder in row:
                    boxes[name] = gr.Textbox("", label=label, placeholder=placeholder, max_lines=1,
                                             elem_id=f"{prefix}-{name.replace('_', '-')}")
    return boxes


def sampling_controls(prefix: str, default_steps: int = 25, flow: bool = False):
    """Steps and scheduler, inside their own accordion (elem_ids `<prefix>-sampling`, `<prefix>-steps`); 'auto'
    runs each model with its recommended scheduler (SD3 needs a flow-matching one, offered where `flow`)."""
    with gr.Accordion("Sampling", open=False, elem_id=f"{prefix}-sampling"):
        steps = gr.Slider(1, 500, value=default_steps, step=1, label="Steps", elem_id=f"{prefix}-steps")
        names = ALL_SCHEDULERS if flow else SCHEDULERS
        scheduler = gr.Dropdown(["auto", *names], value="auto", label="Scheduler",
                                info="auto: the model's recommended one" + (" (flow-euler for SD3)" if flow else ""))
    return steps, scheduler


def seed_row(prefix: str, num_images: bool = True):
    """Seed with a randomize button, and the number of images."""
    with gr.Row():
        seed = SeedInput("0", label="Seed", info=f"a whole number from 0 to {SEED_MAX}", scale=3, max_lines=1)
        dice = gr.Button("Randomize", scale=1, size="sm")
        count = gr.Slider(1, 8, value=1, step=1, label="Images", scale=3) if num_images else None
    dice.click(lambda: str(random.randint(0, SEED_MAX)), None, seed, api_name=f"{prefix}_random_seed", queue=False,
               api_visibility="undocumented")
    return seed, count


def run_buttons(prefix: str, label: str = "Generate"):
    """The run button and its Stop button, side by side (elem_ids `<prefix>-run` and `<prefix>-stop`)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=f"{prefix}-run", scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop", scale=1)
    return run, stop
