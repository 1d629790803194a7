"""What one generation asks for: the Request, its control specs, their checks, the PNG `parameters` text of each
image and the command that reproduces it. The CLI and the UI both build Requests from here."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .errors import EngineError
from .guiders import GuidanceSettings
from .guiders.interval import in_interval
from .pnginfo import format_parameters
from .models.schedulers import A1111_NAMES, ALL_SCHEDULERS
from .sampler import Step

MAX_PROMPT_CHARS = 1000
MAX_SIDE = 2048
MAX_IMAGES = 16
MAX_SEED = 2**63 - 1
MAX_CONTROLS = 3  # stacked ControlNets of one request; each adds an encoder pass per step
MAX_CONDITION_SIDE = 16384  # SDXL's size conditioning: sizes and crop offsets a request may state

# SDXL's micro-conditioning (Podell et al., 2023, section 2.2): (Request field, CLI flag, PNG field, the pair's
# unit). Every pair is written the lab's way, (width, height) or (x, y); diffusers takes (height, width) and (y, x).
MICRO_CONDITIONING = (
    ("original_size", "--original-size", "Original size", "size"),
    ("crop_coords", "--crop-coords", "Crop coords", "offset"),
    ("target_size", "--target-size", "Target size", "size"),
    ("negative_original_size", "--negative-original-size", "Negative original size", "size"),
    ("negative_crop_coords", "--negative-crop-coords", "Negative crop coords", "offset"),
    ("negative_target_size", "--negative-target-size", "Negative target size", "size"),
)


@dataclass(frozen=True)
class ControlSpec:
    """A control map already in the model's convention (edges, scribble or skeleton as RGB) and its knobs."""

    image: Image.Image
    control_type: str
    controlnet: str | None = None
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class Request:
    """Everything one generation needs; `model=None` picks the project's default for the task."""

    model: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    class_label: str | int | None = None
    controls: tuple[ControlSpec, ...] = ()
    guess_mode: bool = False
    guidance: GuidanceSettings = GuidanceSettings()
    classifier: str | None = None
    steps: int = 25
    scheduler: str = "ddim"
    seed: int = 0
    height: int | None = None
    width: int | None = None
    num_images: int = 1
    image_seeds: tuple[int, ...] | None = None  # explicit per-image seeds (a comparison grid repeats one seed)
    # SDXL's size and crop conditioning, (width, height) and (x, y); None: diffusers' defaults (the image's size,
    # crop 0 0). The negative ones condition the unconditional branch; with none of them given it shares the
    # positive ones, with any given the missing ones take those defaults (as StableDiffusionXLPipeline does).
    original_size: tuple[int, int] | None = None
    crop_coords: tuple[int, int] | None = None
    target_size: tuple[int, int] | None = None
    negative_original_size: tuple[int, int] | None = None
    negative_crop_coords: tuple[int, int] | None = None
    negative_target_size: tuple[int, int] | None = None
    t5: bool | None = None  # SD3's T5 encoder: None uses it when the model has one, False drops it, True needs it

    @property
    def task(self) -> str:
        if self.controls:
            return "control"
        return "class" if self.class_label is not None and not self.prompt.strip() else "text"

    @property
    def model_kind(self) -> str:
        """The registry kind of model this request runs: class-conditional or text."""
        return "class" if self.task == "class" else "text"

    @property
    def micro_conditioning(self) -> dict[str, tuple[int, int]]:
        """The SDXL size and crop fields this request sets, by field name."""
        return {name: getattr(self, name) for name, *_ in MICRO_CONDITIONING if getattr(self, name) is not None}

    @property
    def seeds(self) -> list[int]:
        if self.image_seeds is not None:
            return list(self.image_seeds)
        return list(range(self.seed, self.seed + self.num_images))


def _finite(name: str, value: float, low: float = -math.inf, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EngineError(f"The {name} must be a finite number, not {value!r}.")
    if not low <= value <= high:
        raise EngineError(f"The {name} must lie between {low:g} and {high:g}; {value:g} does not.")


def check_request(req: Request) -> None:
    """Reject bad input with one sentence, before any model work."""
    g = req.guidance
    g.check()  # the method and every declared parameter's range
    if req.scheduler not in ALL_SCHEDULERS:
        raise EngineError(f"Unknown scheduler '{req.scheduler}'; choose one of {', '.join(ALL_SCHEDULERS)}.")
    for scale in g.scales:
        _finite("guidance scale", scale, 0, 100)
    if isinstance(g.scale, tuple) and len(g.scale) != req.num_images:
        raise EngineError(f"Per-image scales need one scale per image; got {len(g.scale)} for {req.num_images}.")
    if req.image_seeds is not None and len(req.image_seeds) != req.num_images:
        raise EngineError(f"Per-image seeds need one seed per image; got {len(req.image_seeds)}.")
    _finite("classifier scale", g.classifier_scale, 0, 1000)
    if not isinstance(req.steps, int) or not 1 <= req.steps <= 1000:
        raise EngineError(f"Steps must be a whole number from 1 to 1000, not {req.steps!r}.")
    for side in ("height", "width"):
        value = getattr(req, side)
        if value is not None and (not isinstance(value, int) or value <= 0 or value % 8 or value > MAX_SIDE):
            raise EngineError(f"The {side} must be a positive multiple of 8 up to {MAX_SIDE}, not {value!r}.")
    if not isinstance(req.seed, int) or not 0 <= req.seed <= MAX_SEED - MAX_IMAGES:
        raise EngineError(f"The seed must be a whole number from 0 to {MAX_SEED - MAX_IMAGES}, not {req.seed!r}.")
    if not isinstance(req.num_images, int) or not 1 <= req.num_images <= MAX_IMAGES:
        raise EngineError(f"The number of images must be from 1 to {MAX_IMAGES}, not {req.num_images!r}.")
    for text, name in ((req.prompt, "prompt"), (req.negative_prompt, "negative prompt")):
        if len(text) > MAX_PROMPT_CHARS:
            raise EngineError(f"The {name} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    if req.task == "text" and not req.prompt.strip():
        raise EngineError("The prompt is empty; describe the image to generate.")
    for name, flag, label, unit in MICRO_CONDITIONING:
        _check_pair(label, getattr(req, name), unit)
    if req.t5 not in (None, True, False):
        raise EngineError(f"The T5 choice must be true, false or unset, not {req.t5!r}.")
    if len(req.controls) > MAX_CONTROLS:
        raise EngineError(f"At most {MAX_CONTROLS} controls can be stacked; this request has {len(req.controls)}.")
    for n, control in enumerate(req.controls):
        which = f"control {n + 1}" if len(req.controls) > 1 else "control"
        _finite(f"{which} scale", control.scale, 0, 10)
        _finite(f"{which} start", control.start, 0, 1)
        _finite(f"{which} end", control.end, 0, 1)
        if control.start > control.end:
            raise EngineError(f"{which.capitalize()} must start before it ends; {control.start:g} > {control.end:g}.")


def _check_pair(label: str, value, unit: str) -> None:
    """A size (two whole numbers from 1) or an offset (two from 0), each at most MAX_CONDITION_SIDE."""
    if value is None:
        return
    low = 1 if unit == "size" else 0
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and low <= v <= MAX_CONDITION_SIDE for v in value)
    if not ok:
        shown = repr(value)[:40]
        raise EngineError(f"The {label.lower()} must be two whole numbers from {low} to {MAX_CONDITION_SIDE}, "
                          f"not {shown}.")


def png_parameters(req: Request, model_name: str, controlnets: list[str], seed: int, size: tuple[int, int],
                   index: int = 0) -> str:
    """The PNG `parameters` text (AUTOMATIC1111's format) of image `index`; `controlnets` names each control's net."""
    g = req.guidance
    fields: dict[str, Any] = {
        "Steps": req.steps, "Sampler": A1111_NAMES[req.scheduler], "CFG scale": f"{g.scales[index % len(g.scales)]:g}",
        "Seed": seed, "Size": f"{size[0]}x{size[1]}", "Model": model_name, "Guidance": g.method,
    }
    fields.update((param.label, param.text(value)) for param, value in g.fields())
    if req.class_label is not None:
        fields["Class"] = req.class_label
    if g.classifier_scale:
        fields["Classifier scale"] = f"{g.classifier_scale:g}"
    for n, (c, net) in enumerate(zip(req.controls, controlnets)):
        suffix = f" {n + 1}" if len(req.controls) > 1 else ""
        fields[f"ControlNet{suffix}"] = f"{c.control_type} {net}"
        fields[f"Control weight{suffix}"] = f"{c.scale:g}"
        fields[f"Control range{suffix}"] = f"{c.start:g}-{c.end:g}"
    if req.controls and req.guess_mode:
        fields["Guess mode"] = "True"
    for name, flag, label, unit in MICRO_CONDITIONING:
        value = getattr(req, name)
        if value is not None:
            fields[label] = f"{value[0]}x{value[1]}" if unit == "size" else f"{value[0]} {value[1]}"
    if req.t5 is not None:
        fields["T5"] = str(req.t5)
    return format_parameters(req.prompt, req.negative_prompt, fields)


def command_for(req: Request, index: int = 0) -> str:
    """The `python -m engine generate` command that reproduces image `index` of a request."""
    g = req.guidance
    parts = ["python", "-m", "engine", "generate"]

    def add(flag, value, default=None):
        if value is not None and value != default:
            parts.extend([flag, str(value)])

    add("--model", req.model)
    add("--prompt", req.prompt, "")
    add("--negative-prompt", req.negative_prompt, "")
    add("--class", req.class_label)
    add("--guidance", g.method)
    add("--scale", f"{g.scales[index % len(g.scales)]:g}")
    for param, value in g.cli_fields():
        parts.extend(param.cli_args(value))
    add("--classifier", req.classifier)
    add("--classifier-scale", f"{g.classifier_scale:g}", "0")
    parts.extend(_control_args(req.controls))
    if req.guess_mode:
        parts.append("--guess-mode")
    add("--steps", req.steps)
    add("--scheduler", req.scheduler)
    add("--seed", req.seeds[index])
    add("--height", req.height)
    add("--width", req.width)
    for name, flag, label, unit in MICRO_CONDITIONING:
        value = getattr(req, name)
        if value is not None:
            parts.extend([flag, str(value[0]), str(value[1])])
    if req.t5 is not None:
        parts.append("--t5" if req.t5 else "--no-t5")
    parts.extend(["--out", "out.png"])
    return " ".join(shlex.quote(p) for p in parts)


def _control_args(controls: tuple[ControlSpec, ...]) -> list[str]:
    """The --control flags of the controls, in their stacking order. One map is control.png; several are
    control-1.png, control-2.png, ... in that order. The CLI matches repeated flags by position, so each optional
    flag is written for every control (a default ControlNet as 'auto') or for none."""
    columns = [("--controlnet", [c.controlnet or "auto" for c in controls], "auto"),
               ("--control-scale", [f"{c.scale:g}" for c in controls], "1"),
               ("--control-start", [f"{c.start:g}" for c in controls], "0"),
               ("--control-end", [f"{c.end:g}" for c in controls], "1")]
    used = [(flag, values) for flag, values, default in columns if any(v != default for v in values)]
    parts = []
    for n, control in enumerate(controls):
        name = f"control-{n + 1}.png" if len(controls) > 1 else "control.png"
        parts.extend(["--control", name, "--control-type", control.control_type])
        for flag, values in used:
            parts.extend([flag, values[n]])
    return parts


def output_paths(out: Path, seeds: list[int]) -> list[Path]:
    """PATH.png for one image; PATH-<seed>.png for each of several."""
    if len(seeds) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{seed}{out.suffix}") for seed in seeds]


@dataclass(frozen=True)
class StepPasses:
    """The samples each network takes in one denoising step: the main denoiser (the images times the branches it
    runs in one batch: c, u where guided, PAG's and SEG's perturbed rows), the weak model (AutoGuidance's branch, a
    network of its own), each ControlNet in stacking order (its encoder pass over the rows it is fed; 0 on the
    steps outside its range) and the classifier (classifier guidance: a forward and a backward pass over the
    images)."""

    denoiser: int
    weak: int = 0
    controls: tuple[int, ...] = ()
    classifier: int = 0

    @property
    def evaluations(self) -> int:
        return self.denoiser + self.weak + sum(self.controls) + self.classifier


def step_passes(req: Request) -> dict[StepPasses, int]:
    """The request's steps by what they evaluate: {passes: how many steps run them}. Which branches a step runs is
    the guider's own answer (its needs_uncond and needs_perturbed, so a guidance interval counts), and a ControlNet
    counts on the steps inside its start-end range at a non-zero scale, as the denoiser calls them."""
    guidance = req.guidance
    guider = guidance.build()
    branch = guidance.branch
    weak = branch is not None and branch.weak_model
    images = req.num_images
    classifier = images if guidance.classifier_scale > 0 or req.classifier else 0
    zero, one = torch.zeros(()), torch.ones(())
    counts: dict[StepPasses, int] = {}
    for i in range(req.steps):
        step = Step(i, req.steps, zero, one)
        uncond, perturbed = guider.needs_uncond(step), guider.needs_perturbed(step)
        rows = 1 + uncond + (perturbed and not weak)
        fed = rows - uncond if req.guess_mode else rows  # guess mode feeds the ControlNets no unconditional rows
        controls = tuple(images * fed if c.scale and in_interval(i, req.steps, (c.start, c.end)) else 0
                         for c in req.controls)
        passes = StepPasses(images * rows, images * (perturbed and weak), controls, classifier)
        counts[passes] = counts.get(passes, 0) + 1
    return counts


def evaluations(req: Request) -> int:
    """The request's model evaluations: images x steps x branches, each ControlNet's encoder pass, each classifier
    gradient and each weak-model call counted as one."""
    return sum(passes.evaluations * n for passes, n in step_passes(req).items())


def evals_per_step(req: Request) -> int:
    """Model evaluations of an average step (`evaluations` over the steps)."""
    return round(evaluations(req) / req.steps)
