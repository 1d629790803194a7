"""Class-conditional tab: a class by name, CFG and classifier guidance (alone or together), p(y | x_t) per step."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from engine.errors import EngineError
from engine.generate import Engine, Result
from engine.guiders import GuidanceSettings
from engine.request import Request

from .controls import run_buttons, sampling_controls, seed_row
from .endpoint import endpoint_inputs
from .errors import guarded
from .inputs import shown
from .models import ModelChoices
from .results import gallery, gallery_items, live_gallery, reproduce, reproduce_box
from .streaming import LIVE_EVERY_S, MODEL_EVENT, both, check_budget, in_background, progress_adapter, stoppable
from .values import SEED_MAX, number, scheduler_choice, text, whole
from .zerogpu import on_gpu

NO_CLASSIFIER = "none"
MAX_CLASS_ID = 999_999  # class ids are checked against the model's classes; longer digits are refused here


def class_names(engine: Engine, model: str | None, load: bool = False) -> list[str]:
    """The model's class names, from the model if it is loaded, else from its configuration: never loading it,
    except with `load` (at start-up, for the default model, where nothing else says them). None where the model
    cannot be resolved (the Generate button then says why)."""
    if not model:
        return []
    try:
        spec = engine.resolve(model, "class")
        names = engine.store.class_names(spec)
        return engine.class_names(engine.loaded(spec)) if load and not names else names
    except EngineError:
        return []


def class_of(value) -> str:
    """The class_label parameter as the engine takes it: a class name, or a class id as digits (an integer is an
    id); one sentence for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(whole("class_label (a class id)", value, 0, MAX_CLASS_ID))
    label = text("class_label", value).strip()
    if not label:
        raise EngineError("Pick a class to generate.")
    if label.isdigit() and not (label.isascii() and len(label) <= len(str(MAX_CLASS_ID))):
        raise EngineError(f"The class_label must be a class name or a class id from 0 to {MAX_CLASS_ID} in the "
                          f"digits 0-9, not {shown(label)}.")
    return label


def usable_classifier(models: ModelChoices) -> str:
    """The first offered classifier that resolves here, else 'none'."""
    for name in models.classifier:
        try:
            models.resolve(name, "classifier")
            return name
        except EngineError:
            continue
    return NO_CLASSIFIER


def probability_frame(result: Result) -> pd.DataFrame:
    """Long-form p(y | x_t) per step and image, for a line plot."""
    rows = [{"step": i + 1, "p(y | x_t)": p, "image": f"seed {seed}"}
            for i, probs in enumerate(result.class_probs) for seed, p in zip(result.seeds, probs)]
    return pd.DataFrame(rows, columns=["step", "p(y | x_t)", "image"])


def make_handler(engine: Engine, models: ModelChoices):
    @guarded
    def class_cond(class_label: str, model: str | None = None, scale: float = 4.0, classifier_scale: float = 0.0,
                   classifier: str = NO_CLASSIFIER, steps: int = 25, scheduler: str = "auto", seed: int = 0,
                   num_images: int = 1, progress=gr.Progress(), request: gr.Request = None):
        """Generate images of one class with a class-conditional model, guided by CFG, a noise-aware classifier, or
        both.

        Args:
            class_label: The class, by name (e.g. circle, star, heart) or id.
            model: A class-conditional model offered by this server (default: the project's lab-dit).
            scale: CFG scale (1 = off; the page offers 0 to 20).
            classifier_scale: Classifier-guidance scale, 0 to 50 (0 = off).
            classifier: A noise-aware classifier offered by this server, or 'none'.
            steps: Denoising steps, 1 to 500.
            scheduler: Sampler: auto (the model's recommended one), ddim, ddpm, euler, euler-a, dpm++2m or unipc.
            seed: Seed of the first image (an integer); image k uses seed + k.
            num_images: Number of images, 1 to 16.

        Returns:
            A gallery of PNGs, p(y | x_t) per step and image (the classifier's belief along the run), and the
            command that reproduces the images.
        """
        class_label = class_of(class_label)
        model = models.pick(model, "class")
        req = Request(model=model, class_label=class_label,
                      guidance=GuidanceSettings("cfg", number("CFG scale", scale),
                                                classifier_scale=number("classifier scale", classifier_scale)),
                      classifier=None if classifier in (None, "", NO_CLASSIFIER) else models.pick(classifier,
                                                                                                 "classifier"),
                      steps=whole("number of steps", steps, 1, 1000),
                      scheduler=scheduler_choice(models, model, scheduler, "class"),
                      seed=whole("seed", seed, 0, SEED_MAX), num_images=whole("number of images", num_images, 1, 16))
        check_budget(engine.estimate_seconds(req))

        def work(report, cancel):
            return engine.generate(req, callback=both(progress_adapter(progress), report), live_every_s=LIVE_EVERY_S,
                                   cancel=cancel)

        for kind, value in in_background(work, request):
            if kind == "done":
                yield gallery_items(value), probability_frame(value), reproduce(value)
            else:
                yield live_gallery(value), gr.skip(), gr.skip()

    return class_cond


def build(engine: Engine, models: ModelChoices) -> None:
    names = class_names(engine, models.pick(None, "class"), load=True)
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(models.classes, value=models.default("class"), label="Model",
                                allow_custom_value=True)
            label = gr.Dropdown(names, value=names[0] if names else None, label="Class", allow_custom_value=True,
                                info="the class the image should show")
            scale = gr.Slider(0, 20, value=4.0, step=0.5, label="CFG scale", info="1 = off (class-conditional only)")
            classifiers = [*models.classifier, NO_CLASSIFIER]
            classifier = gr.Dropdown(classifiers, value=usable_classifier(models),
                                     label="Noise-aware classifier", info="also plots p(y | x_t) along the steps",
                                     allow_custom_value=True)
            classifier_scale = gr.Slider(0, 50, value=0, step=0.5, label="Classifier-guidance scale",
                                         info="0 = off; Dhariwal and Nichol (2021)")
            steps, scheduler = sampling_controls("class", models.steps)
            seed, count = seed_row("class_cond")
            button, stop = run_buttons("class")
        with gr.Column(scale=3):
            images = gallery(elem_id="class-images")
            plot = gr.LinePlot(x="step", y="p(y | x_t)", color="image", y_lim=[0, 1],
                               label="Classifier p(y | x_t) per step (needs a classifier)", height=260)
            command = reproduce_box("class")
    @guarded
    def class_names_of(model: str | None = None):
        """The class names a class-conditional model knows, in id order (the choices of the class box).

        Args:
            model: A class-conditional model offered by this server (default: the project's lab-dit).

        Returns:
            The class box updated with the model's class names.
        """
        return gr.update(choices=class_names(engine, models.pick(model, "class")))

    model.change(class_names_of, model, label, api_name="class_names")
    handler = make_handler(engine, models)
    inputs = endpoint_inputs(handler, class_label=label, model=model, scale=scale, classifier_scale=classifier_scale,
                             classifier=classifier, steps=steps, scheduler=scheduler, seed=seed, num_images=count)
    handler = on_gpu(handler, models)  # spaces.GPU on ZeroGPU, else itself
    stoppable(stop, button.click(handler, inputs, [images, plot, command], api_name="class_cond", **MODEL_EVENT))
