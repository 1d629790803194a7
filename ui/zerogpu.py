"""ZeroGPU: the generation handlers run under `spaces.GPU`, each call asking for the seconds its request needs.

ZeroGPU lends a GPU only inside a `spaces.GPU` call, which it runs in a forked worker process; the tabs' default
models are loaded (and moved to CUDA) at start-up, as ZeroGPU requires, and the engine then runs inline in that call
(`Engine(model_thread=False)`), since a thread started before the fork does not exist in the worker. Where the
`spaces` package is absent nothing here changes anything: the handlers are the plain ones. Off ZeroGPU, `spaces.GPU`
returns the handler itself.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
from typing import Callable

from engine.compare import parse_scales
from engine.control.prepare import CONTROL_TYPES
from engine.errors import EngineError

from .models import ModelChoices

log = logging.getLogger("guidance_lab")
# Seconds of one denoising step of one image, both CFG branches, on a ZeroGPU slice (half an H200), per family at
# its native size; a ControlNet adds half a step each. Generous: a call that outlives its duration is ended.
STEP_S = {"sd": 0.06, "sdxl": 0.2, "sd3": 0.25, "dit": 0.04}
UNKNOWN_STEP_S = 0.25  # a family the registry does not know: priced as the dearest
START_S = 10  # the call's own cost: the first CUDA work, decoding, handing the images back
MIN_S, MAX_S = 15, 120  # ZeroGPU refuses longer calls from most accounts; the work budget keeps requests below it


def spaces_module():
    """The `spaces` package, or None where it is not installed."""
    try:
        import spaces
    except ImportError:
        return None
    return spaces


def on_zerogpu() -> bool:
    """A ZeroGPU Space: `spaces` present and SPACES_ZERO_GPU set, as the `spaces` package itself decides."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return flag and spaces_module() is not None


def on_gpu(handler: Callable, models: ModelChoices) -> Callable:
    """`handler` under `spaces.GPU`, its duration computed from each call's steps, images and model; the handler
    itself where `spaces` is absent."""
    spaces = spaces_module()
    if spaces is None:
        return handler
    return spaces.GPU(duration=duration_for(handler, models))(handler)


def duration_for(handler: Callable, models: ModelChoices) -> Callable[..., int]:
    """A callable taking the handler's own arguments and returning the GPU seconds to ask for; a call it cannot read
    (the handler then refuses it in one sentence) asks for the shortest duration."""
    signature = inspect.signature(handler)

    def duration(*args, **kwargs) -> int:
        try:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return estimate_seconds(bound.arguments, models)
        except (TypeError, ValueError, EngineError):
            return MIN_S

    return duration


def estimate_seconds(values: dict, models: ModelChoices) -> int:
    """START_S plus steps x images x the model's seconds per step (ControlNets adding theirs), within MIN_S..MAX_S."""
    steps = int(values.get("steps") or 25)
    controls = _controls(values)
    per_step = _step_seconds(values, models) * (1 + 0.5 * controls)
    seconds = START_S + per_step * max(1, steps) * _images(values)
    return int(min(MAX_S, max(MIN_S, math.ceil(seconds))))


def _images(values: dict) -> int:
    """Images a call makes: num_images, or for the Compare grid rows x scales x seeds (twice with matching)."""
    if "scales" not in values:
        return max(1, int(values.get("num_images") or 1))
    more = [r for r in re.split(r"[;\n]", values.get("more_rows") or "") if r.strip()]
    rows = len(values.get("methods") or ()) + len(more)
    cells = max(1, rows) * len(parse_scales(values["scales"])) * max(1, int(values.get("seeds") or 1))
    return 2 * cells if values.get("match_adherence") else cells


def _controls(values: dict) -> int:
    names = ["control_image"] + [k for k in values if re.fullmatch(r"control_image_\d+", k)]
    return sum(values.get(name) is not None for name in names if name in values)


def _step_seconds(values: dict, models: ModelChoices) -> float:
    kind = "class" if "class_label" in values else "text"
    name = models.pick(values.get("model"), kind)
    return STEP_S.get(models.resolve(name, kind).family, UNKNOWN_STEP_S)


def load_defaults(engine, models: ModelChoices) -> list[str]:
    """On ZeroGPU, load every tab's default model at start-up (ZeroGPU moves them to CUDA there, once, instead of
    in each call); elsewhere nothing. Returns the names loaded; one that fails is logged and left to its tab."""
    if not on_zerogpu():
        return []
    names = [(models.default(kind), kind) for kind in ("text", "class")]
    names += [(models.default_controlnet(t), "controlnet") for t in CONTROL_TYPES]
    loaded = []
    for name, kind in dict.fromkeys((n, k) for n, k in names if n):
        try:
            engine.loaded(models.resolve(name, kind))
            loaded.append(name)
        except EngineError as exc:
            log.warning("start-up load of %s failed: %s", name, exc)
    return loaded
