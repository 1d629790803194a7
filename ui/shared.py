"""Pieces every tab uses: error mapping, PNG outputs with their parameters, seed row, guidance settings,
the progress adapter and the one generation path."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import queue
import random
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr
from PIL import Image

from engine.errors import EngineError
from engine.generate import Engine, Result, Stopped
from engine.guiders import GUIDERS, GuidanceSettings, Param, all_params, method_names
from engine.guiders.registry import owners
from engine.request import MAX_CONTROLS, MAX_IMAGES, MAX_SEED, Request, command_for
from engine.models.registry import recommended_scheduler
from engine.models.schedulers import ALL_SCHEDULERS, SCHEDULERS

from .inputs import SeedInput, sentence, shown

log = logging.getLogger("guidance_lab")
MODEL_EVENT = dict(concurrency_id="model", concurrency_limit=1,  # every model-bound event shares one worker
                   trigger_mode="once")  # a page cannot queue a second run of an event while one is pending
SEED_MAX = MAX_SEED - MAX_IMAGES
# The guidance parameters the API published before they were generated from the guiders, in their positional
# order; parameters of later guiders follow each endpoint's other parameters, so positional calls keep working.
POSITIONAL_GUIDANCE = ("eta", "momentum", "norm_threshold", "rescale", "interval_start", "interval_end")


def _as_error(exc: Exception, where: str) -> gr.Error:
    """One gr.Error sentence for any failure: EngineError as written (at most 300 characters), anything else by its
    type only (its message may hold server paths), with the traceback kept in the log."""
    if isinstance(exc, gr.Error):
        return gr.Error(sentence(exc.message))
    if isinstance(exc, EngineError):
        return gr.Error(sentence(str(exc)))
    if isinstance(exc, RecursionError):
        return gr.Error("The input is nested too deeply to read.")
    log.error("unexpected failure in %s", where, exc_info=exc)
    return gr.Error(f"The request failed unexpectedly ({type(exc).__name__}); the server's log has the details.")


def guarded(fn):
    """Map every failure of a handler (or of a generator handler, at any yield) to one gr.Error sentence."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise _as_error(exc, fn.__name__) from None

        return stream

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _as_error(exc, fn.__name__) from None

    return wrapper


def whole(name: str, value, low: int, high: int) -> int:
    """A whole number in [low, high] from a UI value (ints exactly, at any size), or one sentence saying why not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineError(f"The {name} must be a whole number, not {shown(value)}.")
    if not low <= value <= high:
        raise EngineError(f"The {name} must be from {low} to {high}, not {shown(value)}.")
    return value


def switch(name: str, value) -> bool:
    """True or false from a UI value, or one sentence."""
    if not isinstance(value, bool):
        raise EngineError(f"The {name} must be true or false, not {type(value).__name__}.")
    return value


def text(name: str, value) -> str:
    """Text from a UI value: a string that is valid Unicode (no lone surrogates), or one sentence."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EngineError(f"The {name} must be text, not {type(value).__name__}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EngineError(f"The {name} holds characters that are not valid Unicode text.") from None
    return value


def save_output(image: Image.Image, parameters: str) -> Image.Image:
    """An output image carrying its `parameters` text: Gradio writes it once, as a PNG with that text chunk, into
    the app's own folder (ui/storage.py), so the file the page serves and downloads keeps it."""
    image = image.copy()
    image.info["parameters"] = parameters
    return image


def gallery_items(result: Result) -> list[tuple[str, str]]:
    return [(save_output(im, p), f"seed {s}") for im, p, s in zip(result.images, result.parameters, result.seeds)]


def reproduce(result: Result) -> str:
    """The CLI commands that reproduce each image."""
    return "\n".join(command_for(result.request, i) for i in range(len(result.images)))


def progress_adapter(progress: gr.Progress, rows: int = 1, label: str = "denoising"):
    """Turn the engine's per-step callback dict into Gradio progress; `row` counts batched runs of a grid."""
    if progress is None:
        return None

    def report(info: dict, row: int = 0) -> None:
        total = info["num_steps"] * rows
        progress((row * info["num_steps"] + info["i"] + 1, total), desc=f"{label} step {info['i'] + 1}"
                 f"/{info['num_steps']}" + (f", row {row + 1}/{rows}" if rows > 1 else ""), unit="steps")

    return report


def number(name: str, value) -> float:
    """A finite number from a UI value, or one sentence saying why not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EngineError(f"The {name} must be a finite number, not {shown(value)}.")
    return float(value)


def guidance_settings(values: dict[str, Any], classifier_scale: float = 0.0) -> GuidanceSettings:
    """GuidanceSettings from an endpoint's values: the picked method's own parameters and the modifiers' are
    taken (each checked against its declared range), the other methods' controls ignored."""
    method = text("guidance method", values.get("guidance", "cfg"))
    params = {}
    for param in all_params():
        names = param.api_names
        if all(n in values for n in names):
            raw = tuple(values[n] for n in names) if param.kind == "range" else values[names[0]]
            params[param.name] = raw
    wanted = {p.name: p for p in GuidanceSettings.declared_for(method)}
    checked = {name: wanted[name].check(value) for name, value in params.items() if name in wanted}
    return GuidanceSettings.from_values(method, number("guidance scale", values.get("scale")), checked,
                                        classifier_scale=classifier_scale)


def guidance_api(default_scale: float) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """(name, default) of the guidance parameters an endpoint takes: those in the published positional order,
    and those of later guiders, which go after the endpoint's other parameters."""
    defaults = {"guidance": "cfg", "scale": default_scale}
    for param in all_params():
        start = param.start_value
        defaults.update(zip(param.api_names, start) if param.kind == "range" else [(param.name, start)])
    leading = ["guidance", "scale", *(n for n in POSITIONAL_GUIDANCE if n in defaults)]
    return ([(n, defaults[n]) for n in leading],
            [(n, v) for n, v in defaults.items() if n not in leading])


# What each fixed endpoint parameter means: the "Args:" of the endpoints' docstrings, which Gradio's API page and its
# MCP server show to people and agents. The guiders' parameters describe themselves (engine/guiders/).
PARAMETER_DOCS = {
    "prompt": "What the image should show, in words (at most 1000 characters).",
    "negative_prompt": "The unconditional branch's text: what to steer away from ('' = the empty prompt).",
    "model": "A text-to-image model offered by this server (default: the project's lab-sd).",
    "scale": "Guidance scale, 0 to 50; 1 is the conditional model alone, larger follows the prompt harder.",
    "steps": "Denoising steps, 1 to 500.",
    "scheduler": "Sampler: auto (the model's recommended one), ddim, ddpm, euler, euler-a, dpm++2m or unipc; "
                 "flow-euler or flow-heun for flow-matching models (SD3).",
    "seed": "Seed of the first image (an integer); image k uses seed + k.",
    "num_images": "Number of images, 1 to 16.",
    "trajectory": "Also return the x0 estimate at five steps of the run as one strip.",
    "attention": "Also return attention heat maps per prompt token for the first image (cross-attention; on "
                 "MM-DiT, the joint attention of image tokens to text tokens).",
    "control_image": "The control map (scribble, Canny edges or an OpenPose skeleton), or a source picture with "
                     "preprocess=True.",
    "control_type": "Control type: scribble, canny or pose; it picks the default ControlNet.",
    "controlnet": "A ControlNet offered by this server, or 'auto' for the control type's default.",
    "preprocess": "Turn a source picture into the control map first (Canny edges, scribble, skeleton).",
    "canny_low": "Canny's low threshold, 0 to 1000 (with preprocess for canny).",
    "canny_high": "Canny's high threshold, 0 to 1000 (with preprocess for canny).",
    "control_scale": "ControlNet conditioning scale, 0 to 2.",
    "control_start": "Fraction of the run where the control starts, 0 to 1.",
    "control_end": "Fraction of the run where the control ends, 0 to 1.",
    "guess_mode": "Feed the control to the conditional branch only.",
    "original_size": "SDXL only: the original size it is told the image had, 'W H' ('' = the image's size).",
    "crop_coords": "SDXL only: the crop's top-left corner it is told, 'X Y' ('' = 0 0).",
    "target_size": "SDXL only: the target size it is told, 'W H' ('' = the image's size).",
    "negative_original_size": "SDXL only: the unconditional branch's original size, 'W H' ('' = as diffusers).",
    "negative_crop_coords": "SDXL only: the unconditional branch's crop corner, 'X Y' ('' = as diffusers).",
    "negative_target_size": "SDXL only: the unconditional branch's target size, 'W H' ('' = as diffusers).",
    "drop_t5": "SD3 only: leave out the T5 text encoder (CLIP-L and CLIP-G alone).",
}
_STACKED_DOCS = (  # /controlnet's stacked controls 2, 3, ...: their parameters are named <name>_<number>
    ("control_image", "its control map, used as is (none = no such control)."),
    ("control_type", "scribble, canny or pose; it picks the default ControlNet."),
    ("controlnet", "a ControlNet offered by this server, or 'auto' for the control type's default."),
    ("control_scale", "its conditioning scale, 0 to 2."), ("control_start", "where it starts in the run, 0 to 1."),
    ("control_end", "where it ends in the run, 0 to 1."))
PARAMETER_DOCS.update({f"{name}_{k}": f"Stacked control {k}: {doc}" for k in range(2, MAX_CONTROLS + 1)
                       for name, doc in _STACKED_DOCS})


def _describe(name: str) -> str:
    if name == "guidance":
        return "Guidance method: " + ", ".join(method_names()) + "."
    if name in PARAMETER_DOCS:
        return PARAMETER_DOCS[name]
    for param in all_params():
        if name in param.api_names:
            mine = [GUIDERS[m].label for m in owners(param.name) if m in GUIDERS]
            owners_ = ", ".join(mine) or "every guided method"
            span = "" if param.kind == "text" else f" ({param.low:g} to {param.high:g})"
            return f"{param.label}{span}, for {owners_}: {param.help}."
    return name.replace("_", " ").capitalize() + "."


def docstring(summary: str, names: list[str], returns: str) -> str:
    """A Google-style docstring (summary, Args, Returns) for an endpoint with these parameter names."""
    args = "\n".join(f"    {n}: {_describe(n)}" for n in names)
    return f"{summary}\n\nArgs:\n{args}\n\nReturns:\n    {returns}"


def api_function(name: str, doc: str, params: list[tuple[str, Any]], body: Callable[[dict], Any],
                 returns: str = "The generated images and the command that reproduces them."):
    """An endpoint function whose signature (the API's parameter names and defaults) is `params`, generated from
    the guiders' declarations; `body` gets the values by name. Errors become one sentence (see `guarded`). Its
    docstring lists every parameter, for the API page and for agents through MCP."""
    signature = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d) for n, d in params]
        + [inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()),
           inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                             annotation=gr.Request)])

    def values(args, kwargs) -> dict:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise EngineError(f"The call does not match this endpoint's parameters ({exc}).") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    if inspect.isgeneratorfunction(body):
        def endpoint(*args, **kwargs):
            yield from body(values(args, kwargs))
    else:
        def endpoint(*args, **kwargs):
            return body(values(args, kwargs))

    endpoint.__signature__ = signature
    endpoint.__annotations__ = {"request": gr.Request}  # Gradio passes the page's request (its session) there
    endpoint.__name__ = endpoint.__qualname__ = name
    endpoint.__doc__ = docstring(doc, [n for n, _ in params], returns)
    return guarded(endpoint)


MAX_WORK_S = 30.0  # seconds of work per request on the machine serving it; LAB_MAX_WORK_S overrides
LIVE_EVERY_S = 0.5  # how often a run shows its x0 estimate
POLL_S = 0.5  # how often a stream yields, so that Gradio can end the run of a client that left or pressed Stop;
# each yield is work for the server while the model runs (0.1 s cost text-to-image 0.3 s of its 1.5 s)


def check_budget(seconds: float, limit: float | None = None) -> None:
    """Refuse a request whose estimated work is over the per-request budget, saying what to reduce."""
    limit = float(os.environ.get("LAB_MAX_WORK_S", MAX_WORK_S)) if limit is None else limit
    if seconds > limit:
        raise EngineError(f"This request is about {seconds:.0f} s of work here; the limit is {limit:g} s per "
                          f"request: use fewer images, steps, seeds, scales or methods.")


_RUNNING: dict[str, set[threading.Event]] = {}  # a page session's running runs, by their cancel flags
_RUNNING_LOCK = threading.Lock()


def in_background(work: Callable[[Callable[[dict], None], threading.Event], Any], request: gr.Request | None = None,
                  poll_s: float = POLL_S):
    """Run `work(report, cancel)` on a thread of its own (the engine's model thread does the model work) and yield
    ("live", images) for each live preview it reports, ("tick", None) every `poll_s` otherwise, then ("done",
    result). `cancel` is set, and the engine stops between denoising steps, when the consumer stops (Gradio closes
    the generator of a departed client, or of an API client that cancelled) or when the page session of `request`
    presses Stop (`stop_runs`); after Stop the stream says so in a notice and ends, leaving the last preview shown."""
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    progress = {"i": -1, "num_steps": 0}

    def report(info: dict) -> None:
        progress.update(i=info.get("i", -1), num_steps=info.get("num_steps", 0))
        if "live" in info:
            events.put(("live", (info["i"], info["num_steps"], info["live"])))

    def target() -> None:
        try:
            events.put(("done", work(report, cancel)))
        except BaseException as exc:  # handed to the consumer, which maps it to a sentence
            events.put(("error", exc))

    session = getattr(request, "session_hash", None)
    if session:
        with _RUNNING_LOCK:
            _RUNNING.setdefault(session, set()).add(cancel)
    threading.Thread(target=target, name="request", daemon=True).start()
    try:
        while True:
            try:
                kind, value = events.get(timeout=poll_s)
            except queue.Empty:
                yield "tick", None
                continue
            if kind == "error" and isinstance(value, Stopped) and cancel.is_set():
                done, total = progress["i"] + 1, progress["num_steps"]
                gr.Info(f"Stopped after step {done} of {total}." if total else "Stopped.")
                return
            if kind == "error":
                raise value
            yield kind, value
            if kind == "done":
                return
    finally:
        cancel.set()
        if session:
            with _RUNNING_LOCK:
                runs = _RUNNING.get(session, set())
                runs.discard(cancel)
                if not runs:
                    _RUNNING.pop(session, None)


def stop_runs(request: gr.Request) -> None:
    """Stop the runs of the page session that pressed Stop (never another session's)."""
    with _RUNNING_LOCK:
        runs = list(_RUNNING.get(getattr(request, "session_hash", None) or "", ()))
    for cancel in runs:
        cancel.set()


def live_gallery(live):
    """Gallery items of a live preview (each image's current x0 estimate, captioned with the step); no change for a
    tick without one."""
    if live is None:
        return gr.skip()
    step, total, images = live
    return [(image, f"x0 estimate, step {step + 1}/{total}") for image in images]


def both(*callbacks):
    """One step callback calling each of `callbacks` that is not None."""
    live = [c for c in callbacks if c is not None]
    return lambda info: [c(info) for c in live] and None


@dataclass
class GuidanceControls:
    """The guidance method picker, its scale, and one control per declared guider parameter (by API name); only
    the picked method's own parameters and, for guided methods, the modifiers' are visible."""

    method: gr.Dropdown
    scale: gr.Slider
    params: dict[str, gr.components.Component]

    def inputs(self, names: list[tuple[str, Any]]) -> list:
        """The components for the API names `names` (from guidance_api), in that order."""
        by_name = {"guidance": self.method, "scale": self.scale, **self.params}
        return [by_name[n] for n, _ in names]


def method_choices() -> list[tuple[str, str]]:
    """(menu label, name) of every registered guidance method, in menu order."""
    return [(GUIDERS[name].menu_label(), name) for name in method_names()]


def _visible_for(names: list[str]):
    def visible(method: str):
        shown = {n for p in GuidanceSettings.declared_for(method) for n in p.api_names}
        return tuple(gr.update(visible=n in shown) for n in names)

    return visible


def _param_controls(param: Param, visible: bool) -> dict[str, gr.components.Component]:
    low, high = param.ui_range or (param.low, param.high)
    step = 1 if param.kind == "int" else param.step
    if param.kind == "text":
        return {param.name: gr.Textbox(param.start_value, label=param.label, info=param.help or None, max_lines=1,
                                       max_length=200, visible=visible)}
    if param.kind != "range":
        return {param.name: gr.Slider(low, high, value=param.start_value, step=step, label=param.label,
                                      info=param.help or None, visible=visible)}
    with gr.Row():
        return {name: gr.Slider(low, high, value=value, step=step, label=f"{param.label}: {part}",
                                info=param.help if part == "start" else None, visible=visible)
                for name, value, part in zip(param.api_names, param.start_value, ("start", "end"))}


def guidance_controls(prefix: str, default_scale: float) -> GuidanceControls:
    """Method, scale, and an accordion with every guider's declared parameters."""
    method = gr.Dropdown(method_choices(), value="cfg", label="Guidance method")
    scale = gr.Slider(0, 50, value=default_scale, step=0.5, label="Guidance scale",
                      info="1 = conditional only; larger follows the prompt harder")
    shown = {p.name for p in GuidanceSettings.declared_for("cfg")}
    params: dict[str, gr.components.Component] = {}
    with gr.Accordion("Guidance settings", open=False):
        for param in all_params():
            params.update(_param_controls(param, param.name in shown))
    names = list(params)
    method.change(_visible_for(names), method, [params[n] for n in names], api_name=f"{prefix}_guidance_fields",
                  queue=False, api_visibility="undocumented")
    return GuidanceControls(method, scale, params)


DEFAULT_PROMPT = "a large red circle on the left on a white background"


def prompt_controls(models, prompt: str = DEFAULT_PROMPT, negative_label: str = "Negative prompt"):
    """Prompt, negative prompt and the text-to-image model picker: the first inputs of the text-driven tabs."""
    prompt_box = gr.Textbox(prompt, label="Prompt", lines=2, max_length=1000)
    negative = gr.Textbox("", label=negative_label)
    model = gr.Dropdown(models.text, value=models.default("text"), label="Model", allow_custom_value=True)
    return prompt_box, negative, model


# SDXL's size and crop conditioning in the text tab: (Request field, label, placeholder), positive then negative.
METADATA_FIELDS = (
    ("original_size", "Original size (W H)", "the image's size"),
    ("crop_coords", "Crop top-left (X Y)", "0 0"),
    ("target_size", "Target size (W H)", "the image's size"),
    ("negative_original_size", "Negative original size", "as above"),
    ("negative_crop_coords", "Negative crop top-left", "as above"),
    ("negative_target_size", "Negative target size", "as above"),
)


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


def pair(name: str, value) -> tuple[int, int] | None:
    """'1024 768', '1024x768' or '1024, 768' -> (1024, 768); empty -> None (the model's default); else one sentence.
    The Request checks the range."""
    value = text(name, value).strip()
    if not value:
        return None
    parts = [p for p in re.split(r"[\sx,]+", value.lower()) if p]
    if len(parts) != 2 or not all(re.fullmatch(r"\d{1,6}", p) for p in parts):
        raise EngineError(f"The {name} must be two whole numbers like '1024 1024', or empty for the default.")
    return int(parts[0]), int(parts[1])


def scheduler_choice(models, model, value, kind: str = "text") -> str:
    """An endpoint's scheduler: 'auto' (the default) is the model's recommended one (engine/models/registry.py); a name
    this app does not serve gets ddim here and its one sentence from the run."""
    value = text("scheduler", value) if value is not None else "auto"
    if value not in ("", "auto"):
        return value
    try:
        return recommended_scheduler(models.resolve(models.pick(model, kind), kind))
    except EngineError:
        return "ddim"


def sampling_controls(prefix: str, default_steps: int = 25, flow: bool = False):
    """Steps and scheduler, inside their own accordion (elem_ids `<prefix>-sampling`, `<prefix>-steps`); 'auto'
    runs each model with its recommended scheduler (SD3 needs a flow-matching one, offered where `flow`)."""
    with gr.Accordion("Sampling", open=False, elem_id=f"{prefix}-sampling"):
        steps = gr.Slider(1, 500, value=default_steps, step=1, label="Steps", elem_id=f"{prefix}-steps")
        names = ALL_SCHEDULERS if flow else SCHEDULERS
        scheduler = gr.Dropdown(["auto", *names], value="auto", label="Scheduler",
                                info="auto: the model's recommended one" + (" (flow-euler for SD3)" if flow else ""))
    return steps, scheduler


def run_buttons(prefix: str, label: str = "Generate"):
    """The run button and its Stop button, side by side (elem_ids `<prefix>-run` and `<prefix>-stop`)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=f"{prefix}-run", scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop", scale=1)
    return run, stop


def stoppable(stop: gr.Button, *events) -> None:
    """Stop ends the running runs of the page that pressed it, within a denoising step: the run's cancel flag is
    set, the engine stops between steps, and the stream ends with a notice, keeping the last preview. It does not
    queue (it must not wait behind the run it stops), and other people's runs are untouched. Gradio's own
    `cancels=` is used only on ZeroGPU, where the run lives in a worker process the flag cannot reach: in the page
    it races with the stream's end and can leave every output saying Error."""
    from .zerogpu import on_zerogpu

    if on_zerogpu():
        stop.click(None, None, None, cancels=list(events), queue=False)
    else:
        stop.click(stop_runs, None, None, queue=False, api_visibility="private")


def seed_row(prefix: str, num_images: bool = True):
    """Seed with a randomize button, and the number of images."""
    with gr.Row():
        seed = SeedInput("0", label="Seed", info=f"a whole number from 0 to {SEED_MAX}", scale=3, max_lines=1)
        dice = gr.Button("Randomize", scale=1, size="sm")
        count = gr.Slider(1, 8, value=1, step=1, label="Images", scale=3) if num_images else None
    dice.click(lambda: str(random.randint(0, SEED_MAX)), None, seed, api_name=f"{prefix}_random_seed", queue=False,
               api_visibility="undocumented")
    return seed, count


def reproduce_box(prefix: str):
    """The command that reproduces the run (elem_id `<prefix>-command`)."""
    return gr.Textbox(label="Reproduce from the command line", lines=2, interactive=False, buttons=["copy"],
                      elem_id=f"{prefix}-command")


def gallery(label: str = "Images", **kwargs):
    return gr.Gallery(label=label, columns=4, height="auto", format="png", object_fit="contain",
                      buttons=["download", "fullscreen"], **kwargs)
