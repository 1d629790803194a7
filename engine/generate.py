"""One generation call for every task: check inputs, encode the condition, prepare timesteps and latents, run the
one denoising loop, decode. Text, class and ControlNet requests differ only in the adapter they build."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .adapters import ClassDenoiser, ControlBranch, TextDenoiser
from .errors import EngineError
from .guidance import METHODS, GuidanceSettings
from .loading import ModelStore
from .pnginfo import format_parameters
from .registry import ModelSpec, default_model, resolve
from .runner import MainThreadRunner
from .sampler import guided_model, sample, with_classifier_guidance
from .schedulers import A1111_NAMES, SCHEDULERS, make_scheduler

MAX_PROMPT_CHARS = 1000
MAX_SIDE = 2048
MAX_IMAGES = 16
MAX_SEED = 2**63 - 1


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

    @property
    def task(self) -> str:
        if self.controls:
            return "control"
        return "class" if self.class_label is not None and not self.prompt.strip() else "text"

    @property
    def seeds(self) -> list[int]:
        if self.image_seeds is not None:
            return list(self.image_seeds)
        return list(range(self.seed, self.seed + self.num_images))


@dataclass
class Result:
    """Images with their seeds and PNG parameters; previews and classifier p(y | x_t) when asked for."""

    images: list[Image.Image]
    seeds: list[int]
    parameters: list[str]
    request: Request
    previews: list[tuple[int, list[Image.Image]]] = field(default_factory=list)
    class_probs: list[list[float]] = field(default_factory=list)  # per step, per image


def _finite(name: str, value: float, low: float = -math.inf, high: float = math.inf) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EngineError(f"The {name} must be a finite number, not {value!r}.")
    if not low <= value <= high:
        raise EngineError(f"The {name} must lie between {low:g} and {high:g}; {value:g} does not.")


def check_request(req: Request) -> None:
    """Reject bad input with one sentence, before any model work."""
    g = req.guidance
    if g.method not in METHODS:
        raise EngineError(f"Unknown guidance '{g.method}'; choose one of {', '.join(METHODS)}.")
    if req.scheduler not in SCHEDULERS:
        raise EngineError(f"Unknown scheduler '{req.scheduler}'; choose one of {', '.join(SCHEDULERS)}.")
    for scale in g.scales:
        _finite("guidance scale", scale, 0, 100)
    if isinstance(g.scale, tuple) and len(g.scale) != req.num_images:
        raise EngineError(f"Per-image scales need one scale per image; got {len(g.scale)} for {req.num_images}.")
    if req.image_seeds is not None and len(req.image_seeds) != req.num_images:
        raise EngineError(f"Per-image seeds need one seed per image; got {len(req.image_seeds)}.")
    _finite("classifier scale", g.classifier_scale, 0, 1000)
    _finite("eta", g.eta, 0, 1)
    _finite("APG momentum", g.momentum, -1, 0)
    _finite("APG norm threshold", g.norm_threshold, 0, 1e4)
    _finite("rescale factor", g.rescale, 0, 1)
    start, end = g.interval
    _finite("interval start", start, 0, 1)
    _finite("interval end", end, 0, 1)
    if start > end:
        raise EngineError(f"The guidance interval must start before it ends; {start:g} > {end:g}.")
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
    for control in req.controls:
        _finite("control scale", control.scale, 0, 10)
        _finite("control start", control.start, 0, 1)
        _finite("control end", control.end, 0, 1)
        if control.start > control.end:
            raise EngineError(f"Control must start before it ends; {control.start:g} > {control.end:g}.")


def _step_kwargs(scheduler, generator) -> dict:
    """The extra arguments diffusers' pipelines pass to scheduler.step: eta 0 and the generator, where taken."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


class Engine:
    """Loads models once and serves generation requests for every tab."""

    def __init__(self, store: ModelStore | None = None):
        self.store = store or ModelStore()
        self.postprocess = VaeImageProcessor(vae_scale_factor=8)
        self.runner = MainThreadRunner()  # `python app.py` serves it; elsewhere calls run inline

    @property
    def device(self) -> torch.device:
        return self.store.device

    def loaded(self, spec: ModelSpec):
        """The model for `spec` (pipeline, ControlNet or classifier), loaded once, on the runner's thread like
        every other piece of model work."""
        return self.runner.call(self.store.get, spec).obj

    # 1. Check inputs and resolve the models.
    def model_spec(self, req: Request) -> ModelSpec:
        kind = "class" if req.task == "class" else "text"
        return resolve(req.model or default_model(kind), kind)

    def generate(self, req: Request, callback: Callable[[dict], None] | None = None,
                 preview_steps: set[int] | None = None) -> Result:
        """Run the request (on the main thread when the runner serves; see engine/runner.py)."""
        return self.runner.call(self._generate, req, callback, preview_steps)

    @torch.no_grad()  # no autograd graph through the models (10% of a step); classifier guidance opens its own
    def _generate(self, req: Request, callback: Callable[[dict], None] | None,
                  preview_steps: set[int] | None) -> Result:
        check_request(req)
        spec = self.model_spec(req)
        pipe = self.loaded(spec)
        guidance = req.guidance
        seeds = req.seeds
        generator = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        generator = generator[0] if len(generator) == 1 else generator

        # 2. Encode the condition into a denoiser.
        if req.task == "class":
            denoiser, latent_shape, dtype = self._class_denoiser(pipe, req, guidance)
        else:
            denoiser, latent_shape, dtype = self._text_denoiser(pipe, req, guidance)

        # 3. Prepare timesteps.
        scheduler = make_scheduler(req.scheduler, pipe.scheduler.config)
        scheduler.set_timesteps(req.steps, device=self.device)

        # 4. Prepare latents, drawn per seed on the CPU exactly as diffusers does.
        latents = randn_tensor(latent_shape, generator=generator, device=self.device, dtype=dtype)
        latents = latents * scheduler.init_noise_sigma

        # 5. Denoise with one loop.
        model_fn = guided_model(denoiser, guidance)
        class_probs: list = []
        if guidance.classifier_scale > 0 or req.classifier:
            model_fn = self._with_classifier(model_fn, req, pipe, class_probs)
        previews: list[tuple[int, list[Image.Image]]] = []
        step_report = self._reporter(pipe, req, callback, preview_steps, previews)
        latents = sample(model_fn, scheduler, latents, prediction_type=denoiser.prediction_type,
                         step_kwargs=_step_kwargs(scheduler, generator), callback=step_report)

        # 6. Decode.
        images = self.decode(pipe, latents, generator, req.task == "class")
        params = [self.parameters(req, spec, s, images[0].size, i) for i, s in enumerate(seeds)]
        probs = [p.tolist() for p in class_probs]
        return Result(images, seeds, params, req, previews, probs)

    def _text_denoiser(self, pipe, req: Request, guidance: GuidanceSettings):
        needs_uncond = guidance.method != "none" and guidance.scale != 1
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            req.prompt, self.device, req.num_images, needs_uncond, req.negative_prompt or None)
        factor = pipe.vae_scale_factor
        height = req.height or pipe.unet.config.sample_size * factor
        width = req.width or pipe.unet.config.sample_size * factor
        controls = [self._control_branch(c, height, width, req.num_images, prompt_embeds.dtype)
                    for c in req.controls]
        prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        denoiser = TextDenoiser(pipe.unet, prompt_embeds, negative_embeds, controls, req.guess_mode,
                                prediction_type)
        shape = (req.num_images, pipe.unet.config.in_channels, height // factor, width // factor)
        return denoiser, shape, prompt_embeds.dtype

    def _control_branch(self, control: ControlSpec, height: int, width: int, batch: int, dtype) -> ControlBranch:
        name = control.controlnet or default_model("controlnet", control.control_type)
        controlnet = self.loaded(resolve(name, "controlnet"))
        processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
        image = processor.preprocess(control.image, height=height, width=width).to(dtype=torch.float32)
        image = image.repeat_interleave(batch, dim=0).to(device=self.device, dtype=dtype)  # (B, 3, H, W)
        return ControlBranch(controlnet, image, control.scale, control.start, control.end)

    def class_names(self, pipe) -> list[str]:
        """Class names in id order, from the pipeline's id2label."""
        labels = getattr(pipe, "labels", None) or {}
        return [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]

    def _label_id(self, pipe, label: str | int) -> int:
        num_classes = pipe.transformer.config.num_embeds_ada_norm
        if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
            label_id = int(label)
            if not 0 <= label_id < num_classes:
                raise EngineError(f"The class id must be from 0 to {num_classes - 1}, not {label_id}.")
            return label_id
        labels = getattr(pipe, "labels", None) or {}
        if label not in labels:
            known = ", ".join(self.class_names(pipe)[:20])
            raise EngineError(f"Unknown class '{label}'; this model knows: {known or 'class ids only'}.")
        return labels[label]

    def _class_denoiser(self, pipe, req: Request, guidance: GuidanceSettings):
        transformer = pipe.transformer
        label_id = self._label_id(pipe, req.class_label)
        labels = torch.tensor([label_id] * req.num_images, device=self.device)
        null_id = transformer.config.num_embeds_ada_norm  # the id LabelEmbedding reserves for "no class"
        channels = transformer.config.in_channels
        prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        denoiser = ClassDenoiser(transformer, labels, null_id, channels, prediction_type)
        size = transformer.config.sample_size
        return denoiser, (req.num_images, channels, size, size), transformer.dtype

    def _with_classifier(self, model_fn, req: Request, pipe, record: list):
        classifier = self.loaded(resolve(req.classifier or default_model("classifier"), "classifier"))
        label = req.class_label
        if label is None:
            raise EngineError("Classifier guidance needs a class to steer toward.")
        label_id = classifier.label_id(label)
        labels = torch.tensor([label_id] * req.num_images, device=self.device)
        return with_classifier_guidance(model_fn, classifier, labels, req.guidance.classifier_scale, record)

    def _reporter(self, pipe, req: Request, callback, preview_steps, previews):
        if callback is None and not preview_steps:
            return None

        def report(info: dict[str, Any]) -> None:
            if preview_steps and info["i"] in preview_steps:
                images = self.decode(pipe, info["denoised"], None, req.task == "class")
                previews.append((info["i"], images))
                info = {**info, "preview": images}
            if callback is not None:
                callback(info)

        return report

    @torch.no_grad()
    def decode(self, pipe, latents: torch.Tensor, generator, class_model: bool) -> list[Image.Image]:
        """Latents to PIL images, with the same arithmetic as the matching diffusers pipeline."""
        vae = pipe.vae
        if class_model:
            samples = vae.decode(1 / vae.config.scaling_factor * latents).sample  # as DiTPipeline writes it
        else:
            samples = vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        return self.postprocess.postprocess(samples, output_type="pil")

    def parameters(self, req: Request, spec: ModelSpec, seed: int, size: tuple[int, int], index: int = 0) -> str:
        """The PNG `parameters` text for one image of this request."""
        g = req.guidance
        fields: dict[str, Any] = {
            "Steps": req.steps, "Sampler": A1111_NAMES[req.scheduler], "CFG scale": f"{g.scales[index % len(g.scales)]:g}", "Seed": seed,
            "Size": f"{size[0]}x{size[1]}", "Model": spec.name, "Guidance": g.method,
        }
        if g.method in ("perp-cfg", "apg"):
            fields["Guidance eta"] = f"{g.eta:g}"
        if g.method == "apg":
            fields["APG momentum"] = f"{g.momentum:g}"
            fields["APG norm threshold"] = f"{g.norm_threshold:g}"
        if g.method == "cfg-zero-star":
            fields["Zero-init steps"] = g.zero_init_steps
        if g.rescale:
            fields["Guidance rescale"] = f"{g.rescale:g}"
        if g.interval != (0.0, 1.0):
            fields["Guidance interval"] = f"{g.interval[0]:g}-{g.interval[1]:g}"
        if req.class_label is not None:
            fields["Class"] = req.class_label
        if g.classifier_scale:
            fields["Classifier scale"] = f"{g.classifier_scale:g}"
        for n, c in enumerate(req.controls):
            suffix = f" {n + 1}" if len(req.controls) > 1 else ""
            fields[f"ControlNet{suffix}"] = f"{c.control_type} {c.controlnet or default_model('controlnet', c.control_type)}"
            fields[f"Control weight{suffix}"] = f"{c.scale:g}"
            fields[f"Control range{suffix}"] = f"{c.start:g}-{c.end:g}"
        if req.controls and req.guess_mode:
            fields["Guess mode"] = "True"
        return format_parameters(req.prompt, req.negative_prompt, fields)
