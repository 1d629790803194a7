"""Pieces every tab uses: error mapping, PNG outputs with their parameters, seed row, guidance settings,
the progress adapter and the one generation path."""

from __future__ import annotations

import functools
import logging
import math
import random
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from engine.cli import command_for
from engine.errors import EngineError
from engine.generate import MAX_SEED, Engine, Request, Result
from engine.guidance import GuidanceSettings
from engine.pnginfo import save_png
from engine.schedulers import SCHEDULERS

log = logging.getLogger("guidance_lab")
OUTPUT_DIR = Path(tempfile.mkdtemp(prefix="guidance-lab-"))
MODEL_EVENT = dict(concurrency_id="model", concurrency_limit=1)  # every model-bound event shares one worker
SEED_MAX = MAX_SEED - 16
METHOD_CHOICES = [("None (conditional only)", "none"), ("CFG", "cfg"),
                  ("Perp-CFG (lecture notes: projects against u)", "perp-cfg"),
                  ("APG (Sadat et al. 2024: projects against c)", "apg"), ("CFG-Zero*", "cfg-zero-star")]


def guarded(fn):
    """Map every failure to a gr.Error sentence: EngineError as written, anything else named and logged."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except EngineError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # the page gets a sentence, the log keeps the traceback
            log.exception("unexpected failure in %s", fn.__name__)
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise gr.Error(f"Generation failed ({type(exc).__name__}{': ' + detail if detail else ''}).") from None

    return wrapper


def whole(name: str, value, low: int, high: int) -> int:
    """A whole number in [low, high] from a UI number, or one sentence saying why not."""
    if value is None or isinstance(value, bool) or not math.isfinite(float(value)) or float(value) != int(value):
        raise EngineError(f"The {name} must be a whole number, not {value!r}.")
    if not low <= int(value) <= high:
        raise EngineError(f"The {name} must be from {low} to {high}, not {int(value)}.")
    return int(value)


def text(name: str, value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EngineError(f"The {name} must be text, not {type(value).__name__}.")
    return value


def save_output(image: Image.Image, parameters: str) -> str:
    """Write a PNG carrying the `parameters` chunk, so the file the page serves and downloads keeps it."""
    path = OUTPUT_DIR / f"{uuid.uuid4().hex}.png"
    save_png(image, path, parameters)
    return str(path)


def gallery_items(result: Result) -> list[tuple[str, str]]:
    return [(save_output(im, p), f"seed {s}") for im, p, s in zip(result.images, result.parameters, result.seeds)]


def reproduce(result: Result) -> str:
    """The CLI commands that reproduce each image."""
    return "\n".join(command_for(result.request, i) for i in range(len(result.images)))


def progress_adapter(progress: gr.Progress, rows: int = 1, label: str = "denoising"):
    """Turn the engine's per-step callback dict into Gradio progress; `row` counts batched runs of a grid."""

    def report(info: dict, row: int = 0) -> None:
        total = info["num_steps"] * rows
        progress((row * info["num_steps"] + info["i"] + 1, total), desc=f"{label} step {info['i'] + 1}"
                 f"/{info['num_steps']}" + (f", row {row + 1}/{rows}" if rows > 1 else ""), unit="steps")

    return report


def guidance_settings(method: str, scale: float, eta: float = 0.0, momentum: float = 0.0,
                      norm_threshold: float = 0.0, rescale: float = 0.0, interval_start: float = 0.0,
                      interval_end: float = 1.0, classifier_scale: float = 0.0) -> GuidanceSettings:
    """GuidanceSettings from UI values, with only the chosen method's own parameters taken."""
    return GuidanceSettings(method=method, scale=float(scale), eta=float(eta) if method in ("perp-cfg", "apg") else 0.0,
                            momentum=float(momentum) if method == "apg" else 0.0,
                            norm_threshold=float(norm_threshold) if method == "apg" else 0.0,
                            rescale=float(rescale), interval=(float(interval_start), float(interval_end)),
                            classifier_scale=float(classifier_scale))


def run(engine: Engine, req: Request, progress: gr.Progress | None = None, **kwargs) -> Result:
    """The one generation path of every tab: generate with the progress bar fed from the step callback."""
    callback = progress_adapter(progress) if progress is not None else None
    return engine.generate(req, callback=callback, **kwargs)


@dataclass
class GuidanceControls:
    """The guidance method picker and its parameters; only the picked method's own parameters are visible."""

    method: gr.Dropdown
    scale: gr.Slider
    eta: gr.Slider
    momentum: gr.Slider
    norm_threshold: gr.Slider
    rescale: gr.Slider
    interval_start: gr.Slider
    interval_end: gr.Slider

    @property
    def inputs(self) -> list:
        return [self.method, self.scale, self.eta, self.momentum, self.norm_threshold, self.rescale,
                self.interval_start, self.interval_end]


def _visible_for(method: str):
    projected = method in ("perp-cfg", "apg")
    return (gr.update(visible=projected), gr.update(visible=method == "apg"), gr.update(visible=method == "apg"),
            gr.update(visible=method != "none"), gr.update(visible=method != "none"),
            gr.update(visible=method != "none"))


def guidance_controls(prefix: str, default_scale: float) -> GuidanceControls:
    """Method, scale, and an accordion with eta / APG momentum and threshold / rescale / interval."""
    method = gr.Dropdown(METHOD_CHOICES, value="cfg", label="Guidance method")
    scale = gr.Slider(0, 30, value=default_scale, step=0.5, label="Guidance scale",
                      info="1 = conditional only; larger follows the prompt harder")
    with gr.Accordion("Guidance settings", open=False):
        eta = gr.Slider(0, 1, value=0, step=0.05, label="eta (weight of the parallel part)", visible=False)
        momentum = gr.Slider(-1, 0, value=-0.5, step=0.05, label="APG momentum", visible=False)
        norm_threshold = gr.Slider(0, 50, value=0, step=0.5, label="APG norm threshold (0 = off)", visible=False)
        rescale = gr.Slider(0, 1, value=0, step=0.05, label="Guidance rescale (Lin et al. 2023; 0.7 typical)")
        with gr.Row():
            interval_start = gr.Slider(0, 1, value=0, step=0.05, label="Guide from (fraction of the run)")
            interval_end = gr.Slider(0, 1, value=1, step=0.05, label="Guide until")
    controls = GuidanceControls(method, scale, eta, momentum, norm_threshold, rescale, interval_start, interval_end)
    method.change(_visible_for, method, [eta, momentum, norm_threshold, rescale, interval_start, interval_end],
                  api_name=f"{prefix}_guidance_fields", queue=False)
    return controls


def sampling_controls(default_steps: int = 25):
    """Steps and scheduler, inside their own accordion."""
    with gr.Accordion("Sampling", open=False):
        steps = gr.Slider(1, 150, value=default_steps, step=1, label="Steps")
        scheduler = gr.Dropdown(list(SCHEDULERS), value="ddim", label="Scheduler")
    return steps, scheduler


def seed_row(prefix: str, num_images: bool = True):
    """Seed with a randomize button, and the number of images."""
    with gr.Row():
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=SEED_MAX, scale=3)
        dice = gr.Button("Randomize", scale=1, size="sm")
        count = gr.Slider(1, 8, value=1, step=1, label="Images", scale=3) if num_images else None
    dice.click(lambda: random.randint(0, 2**31 - 1), None, seed, api_name=f"{prefix}_random_seed", queue=False)
    return seed, count


def reproduce_box():
    return gr.Textbox(label="Reproduce from the command line", lines=2, interactive=False, buttons=["copy"])


def gallery(label: str = "Images", **kwargs):
    return gr.Gallery(label=label, columns=4, height="auto", format="png", object_fit="contain",
                      buttons=["download", "fullscreen"], **kwargs)

from gradio.events import Dependency

class ImageInput(gr.Image):
    """gr.Image whose unreadable uploads (corrupt, not an image) become one sentence instead of PIL's exception."""

    def get_block_name(self) -> str:
        return "image"  # the same front-end component as gr.Image

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(f"The image could not be read ({type(exc).__name__}); upload a PNG or JPEG file.") from None
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component