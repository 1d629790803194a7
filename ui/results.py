"""What a run shows: PNGs that carry their parameters, gallery items captioned with their seeds (or, while the run
denoises, with its step), and the command line that reproduces them."""

from __future__ import annotations

import gradio as gr
from PIL import Image

from engine.generate import Result
from engine.request import command_for


def save_output(image: Image.Image, parameters: str) -> Image.Image:
    """An output image carrying its `parameters` text: Gradio writes it once, as a PNG with that text chunk, into
    the app's own folder (ui/storage.py), so the file the page serves and downloads keeps it."""
    image = image.copy()
    image.info["parameters"] = parameters
    return image


def gallery_items(result: Result) -> list[tuple[str, str]]:
    return [(save_output(im, p), f"seed {s}") for im, p, s in zip(result.images, result.parameters, result.seeds)]


def live_gallery(live):
    """Gallery items of a live preview (each image's current x0 estimate, captioned with the step); no change for a
    tick without one."""
    if live is None:
        return gr.skip()
    step, total, images = live
    return [(image, f"x0 estimate, step {step + 1}/{total}") for image in images]


def reproduce(result: Result) -> str:
    """The CLI commands that reproduce each image."""
    return "\n".join(command_for(result.request, i) for i in range(len(result.images)))


def gallery(label: str = "Images", **kwargs):
    return gr.Gallery(label=label, columns=4, height="auto", format="png", object_fit="contain",
                      buttons=["download", "fullscreen"], **kwargs)


def reproduce_box(prefix: str):
    """The command that reproduces the run (elem_id `<prefix>-command`)."""
    return gr.Textbox(label="Reproduce from the command line", lines=2, interactive=False, buttons=["copy"],
                      elem_id=f"{prefix}-command")
