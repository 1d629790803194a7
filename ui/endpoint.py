"""A generation endpoint as Gradio publishes it: its signature (the API's parameter names, in order, with their
defaults), its docstring (what Gradio's API page and its MCP server tell people and agents), and its input
components, taken by parameter name in the signature's order so that the page and the API never disagree."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import gradio as gr

from engine.errors import EngineError
from engine.request import MAX_CONTROLS

from .errors import guarded
from .guidance import describe

INJECTED = ("progress", "request")  # parameters Gradio fills itself; no component feeds them

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


def docstring(summary: str, names: list[str], returns: str, docs: dict[str, str] | None = None) -> str:
    """A Google-style docstring (summary, Args, Returns) for an endpoint with these parameter names, each explained
    on one line (Gradio reads no further); `docs` holds the endpoint's own words where PARAMETER_DOCS' do not fit."""
    docs = {**PARAMETER_DOCS, **(docs or {})}
    args = "\n".join(f"    {n}: {docs.get(n) or describe(n) or n.replace('_', ' ').capitalize() + '.'}" for n in names)
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


def parameter_names(handler: Callable) -> list[str]:
    """The API parameters of an endpoint function, in order: those a component feeds (not Gradio's own)."""
    return [n for n in inspect.signature(handler).parameters if n not in INJECTED]


def endpoint_inputs(handler: Callable, /, **components: gr.components.Component) -> list:
    """The inputs list of `handler`'s event: each component given by the name of the parameter it feeds, put in the
    order of the handler's signature. A parameter without a component, or a component without a parameter, is a
    mistake in the tab, refused when the page is built."""
    names = parameter_names(handler)
    missing = [n for n in names if n not in components]
    unknown = [n for n in components if n not in names]
    if missing or unknown:
        raise ValueError(f"The inputs of {handler.__name__} do not match its parameters: no component for "
                         f"{missing or 'none'}, no parameter for {unknown or 'none'}.")
    return [components[n] for n in names]
