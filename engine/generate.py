"""One generation call for every task: check inputs, encode the condition, prepare timesteps and latents, run the
one denoising loop, decode. Text, class and ControlNet requests differ only in the adapter they build, and so do the
model families (SD 1.x, SDXL, SD3, DiT): each encodes its prompt with its own pipeline's encode_prompt."""

from __future__ import annotations

import inspect
import threading
import time
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .models.adapters import (ClassDenoiser, ControlBranch, JointDenoiser, MicroConditioning, PromptCondition, TextDenoiser,
                       model_family)
from .errors import EngineError
from .guiders import GuidanceSettings
from .models.loading import ModelStore
from .models.registry import REGISTRY, ModelSpec, default_model, recommended_scheduler, resolve
from .meter import Estimate, Meter, RunLimit, current_limit
from .request import MICRO_CONDITIONING, ControlSpec, Request, check_request, evals_per_step, png_parameters
from .cpu.runner import Inline, ModelThread
from .sampler import guided_model, sample, with_classifier_guidance
from .models.schedulers import check_scheduler, make_scheduler

FAMILY_NAMES = {"sd": "an SD 1.x model", "sdxl": "an SDXL model", "sd3": "an SD3 model", "dit": "a DiT model"}


class Stopped(EngineError):
    """The run was cancelled between steps (its client left or pressed Stop)."""


class _Overran(Exception):
    """The run passed its request's limit (engine/meter.py, RunLimit) after step `done`; `denoised` is its last x0
    estimate, what it keeps."""

    def __init__(self, done: int, steps: int, denoised: torch.Tensor):
        super().__init__(done, steps)
        self.done, self.steps, self.denoised = done, steps, denoised


@dataclass(frozen=True)
class _Watch:
    """How a run is observed: its step callback, where x0 previews are decoded, its cancel flag and the limit of
    the request it belongs to."""

    callback: Callable[[dict], None] | None
    preview_steps: set[int]
    live_every_s: float | None
    cancel: threading.Event | None
    limit: RunLimit | None = None


@dataclass
class Result:
    """Images with their seeds and PNG parameters; previews and classifier p(y | x_t) when asked for."""

    images: list[Image.Image]
    seeds: list[int]
    parameters: list[str]
    request: Request
    previews: list[tuple[int, list[Image.Image]]] = field(default_factory=list)
    class_probs: list[list[float]] = field(default_factory=list)  # per step, per image
    note: str = ""  # why the images are not the finished ones: the sentence of a run stopped at its limit


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

    def __init__(self, store: ModelStore | None = None, *, model_thread: bool = True):
        """model_thread=False runs model work on each caller's thread: only for measuring what the thread saves."""
        self.store = store or ModelStore()
        self.postprocess = VaeImageProcessor(vae_scale_factor=8)
        # All model work runs on one thread of the engine's own (engine/cpu/runner.py); the thread ends with the
        # engine, and on the CPU gives memory back when it has been idle a while (engine/cpu/__init__.py, settle).
        settle = self.store.cpu.settle if self.store.cpu is not None else None
        self.runner = ModelThread(on_idle=settle) if model_thread else Inline()
        self.meter = Meter()  # what requests cost here: each model's calibration and the present slowdown
        # A fast tokenizer keeps its truncation settings between calls: requests running side by side
        # (generate_many) encode their prompts one at a time, or one may tokenize with the other's settings.
        self._encoding = threading.Lock()
        # A server's model folder (LAB_MODEL_DIR): requests name the folders under it by their relative names,
        # which is all that PNG text, reproduce commands and errors then show.
        self.model_root: Path | None = None
        weakref.finalize(self, self.runner.close)

    @property
    def device(self) -> torch.device:
        return self.store.device

    def loaded(self, spec: ModelSpec):
        """The model for `spec` (pipeline, ControlNet or classifier), loaded once, on the model thread like
        every other piece of model work."""
        return self.runner.call(self.store.get, spec).obj

    # 1. Check inputs and resolve the models.
    def resolve(self, name: str, kind: str | None = None) -> ModelSpec:
        """The spec of a registry name, folder (one under `model_root` by its relative name) or hub id."""
        return resolve(name, kind, self.model_root)

    def model_spec(self, req: Request) -> ModelSpec:
        return self.resolve(req.model or default_model(req.model_kind), req.model_kind)

    def default_scheduler(self, req: Request) -> str:
        """The scheduler a request that names none runs (engine/models/registry.py, recommended_scheduler)."""
        return recommended_scheduler(self.model_spec(req))

    def native_size(self, model: str | None = None, kind: str = "text") -> tuple[int, int]:
        """(width, height) the model generates at by default: its latent size times the VAE's factor."""
        pipe = self.loaded(self.resolve(model or default_model(kind), kind))
        return _native_size(pipe)

    def generate(self, req: Request, callback: Callable[[dict], None] | None = None,
                 preview_steps: set[int] | None = None, *, live_every_s: float | None = None,
                 cancel: threading.Event | None = None) -> Result:
        """Run the request on the model thread (engine/cpu/runner.py), from any thread. `callback` gets each step's
        dict, with the decoded x0 estimate as "preview" at `preview_steps` and as "live" every `live_every_s`
        seconds from twice that into the run; setting `cancel` stops the run between steps with `Stopped`. A request
        admitted under a budget (engine/meter.py, `admit`) stops between steps at twice its budget and returns the
        images of its last x0 estimate, its `note` saying so."""
        watch = _Watch(callback, preview_steps or set(), live_every_s, cancel, current_limit())
        return self.runner.call(self._generate, req, watch)

    def generate_many(self, reqs: list[Request], callbacks: list[Callable[[dict], None] | None] | None = None, *,
                      cancel: threading.Event | None = None) -> list[Result | EngineError]:
        """Independent requests (a Compare grid's rows), each with its own step callback: a Result or the request's
        EngineError for each, in order; `Stopped` and other exceptions are raised. On a multi-core CPU the requests
        that leave the model as it is run side by side, one per core (engine/cpu/parallel.py); the others, such as PAG
        and SEG, which give the model's attention their own processors for their run, run one after another."""
        callbacks = callbacks or [None] * len(reqs)
        return self.runner.call(self._generate_many, list(reqs), list(callbacks), cancel, current_limit())

    def _generate_many(self, reqs: list[Request], callbacks: list, cancel, limit=None) -> list[Result | EngineError]:
        outcomes: list[tuple[bool, Any] | None] = [None] * len(reqs)
        # Side by side: those that leave the model as it is, biggest first, each on a core as one frees. A much
        # smaller request (the grid's 3-image conditional run) joins only where two or more big ones keep both
        # cores busy: it then runs on one core while the other finishes, where after them it would run on both,
        # and a 3-image batch gains nothing from a second OpenMP thread (22-25 ms a forward on one core, 22-106
        # on two, six rounds on a 2-core VM shared with other guests). Alone beside one big request
        # it would leave a core idle; it then runs after, as before.
        candidates = [i for i, req in enumerate(reqs) if self.device.type == "cpu" and _leaves_model_as_is(req)]
        candidates.sort(key=lambda i: -evals_per_step(reqs[i]))
        biggest = max((evals_per_step(reqs[i]) for i in candidates), default=0)
        together = [i for i in candidates if 2 * evals_per_step(reqs[i]) >= biggest]
        if len(together) >= 2:
            together = candidates
        # Each job's wall time is its share of the cores: the meter keeps what a request costs the machine.
        share = 1 / max(1, min(torch.get_num_threads(), len(together)))
        jobs = [self._delegated_job(reqs[i], _Watch(callbacks[i], set(), None, cancel, limit), share)
                for i in together]
        side_by_side = self.store.cpu.side_by_side(jobs) if self.store.cpu is not None else None
        for i, outcome in zip(together, side_by_side or [None] * len(together)):
            outcomes[i] = outcome
        _raise_unexpected(outcomes)  # a stop or a fault ends the batch before the rest runs
        for i, req in enumerate(reqs):
            if outcomes[i] is None:
                try:
                    outcomes[i] = True, self._generate(req, _Watch(callbacks[i], set(), None, cancel, limit))
                except Stopped:
                    raise
                except EngineError as exc:
                    outcomes[i] = False, exc
        return [value for _, value in outcomes]

    def _delegated_job(self, req: Request, watch: "_Watch", share: float) -> Callable[[], Result]:
        """A request as a job for a worker of the CPU path's: its model calls run inline on that worker."""
        def job() -> Result:
            with self.runner.delegated():
                return self._generate(req, watch, share)
        return job

    def estimate_seconds(self, req: Request) -> Estimate:
        """Seconds this request should take here now: its model evaluations priced from this machine's calibration
        of each model it uses (measured on first use, then kept), times the present slowdown (engine/meter.py)."""
        check_request(req)
        return self.meter.estimate(self, req)

    @torch.no_grad()  # no autograd graph through the models (10% of a step); classifier guidance opens its own
    def _generate(self, req: Request, watch: "_Watch", share: float = 1.0) -> Result:
        started = time.perf_counter()  # the whole run: what the meter compares with the request's work
        check_request(req)
        spec = self.model_spec(req)
        pipe = self.loaded(spec)
        family = model_family(pipe)
        _check_family(req, family)
        req = _branch_for_family(req, family)
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
        scheduler.set_timesteps(req.steps, device=self.device, **_flow_shift(scheduler, pipe, latent_shape))

        # 4. Prepare latents, drawn per seed on the CPU exactly as diffusers does.
        latents = randn_tensor(latent_shape, generator=generator, device=self.device, dtype=dtype)
        latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching starts at pure noise

        # 5. Denoise with one loop.
        guider = guidance.build()
        model_fn = guided_model(denoiser, guider)
        class_probs: list = []
        if guidance.classifier_scale > 0 or req.classifier:
            model_fn = self._with_classifier(model_fn, req, pipe, class_probs)
        previews: list[tuple[int, list[Image.Image]]] = []
        step_report = self._reporter(pipe, req, watch, previews)
        note = ""
        denoising = time.perf_counter()
        try:
            with self._branch_installed(pipe, guidance):
                latents = sample(model_fn, scheduler, latents, prediction_type=denoiser.prediction_type,
                                 step_kwargs=_step_kwargs(scheduler, generator), callback=step_report)
        except _Overran as overran:  # past the request's limit: its last x0 estimate is what it has
            latents, note = overran.denoised, watch.limit.stopped(overran.done, overran.steps)
        denoising = time.perf_counter() - denoising - (step_report.seconds if step_report else 0.0)

        # 6. Decode.
        images = self.decode(pipe, latents, generator, req.task == "class")
        params = [self.parameters(req, spec, s, images[0].size, i) for i, s in enumerate(seeds)]
        probs = [p.tolist() for p in class_probs]
        if not note:  # the page's callbacks (live previews, progress) are the page's time, not the run's
            outside = time.perf_counter() - started - denoising - (step_report.seconds if step_report else 0.0)
            self.meter.observe(self, req, outside * share, denoising * share)
        return Result(images, seeds, params, req, previews, probs, note)

    @staticmethod
    def _branch_installed(pipe, guidance: GuidanceSettings):
        """What the guider's perturbed branch installs on the model for the run (PAG's and SEG's attention
        processors, which take the rows the denoiser marks: engine/guiders/branch.py), or nothing."""
        branch = guidance.branch
        if branch is None:
            return nullcontext()
        return branch.installed(getattr(pipe, "unet", None) or pipe.transformer)

    def _branch_model(self, spec: ModelSpec, req: Request):
        """The network a branch with a model of its own calls (AutoGuidance's weak model): the registered weak UNet
        of the picked model; None where the branch is rows of the same batch, or there is no branch."""
        branch = req.guidance.branch
        if branch is None or not branch.weak_model:
            return None
        if not spec.weak:
            offered = ", ".join(s.name for s in REGISTRY.values() if s.weak) or "none"
            raise EngineError(f"{branch.label} needs a weak version of '{spec.name}', and there is none; models "
                              f"with one: {offered}.")
        return self.loaded(self.resolve(spec.weak, "unet"))

    def _text_denoiser(self, pipe, req: Request, guidance: GuidanceSettings):
        family = model_family(pipe)
        factor = pipe.vae_scale_factor
        native_width, native_height = _native_size(pipe)
        height, width = req.height or native_height, req.width or native_width
        if family == "sd3":
            return self._joint_denoiser(pipe, req, guidance, height, width)
        if family == "sdxl":
            cond, uncond = self._sdxl_conditions(pipe, req, guidance, height, width)
        else:
            with self._encoding:
                embeds, negative = pipe.encode_prompt(req.prompt, self.device, req.num_images, guidance.guided,
                                                      req.negative_prompt or None)
            cond, uncond = PromptCondition(embeds), None if negative is None else PromptCondition(negative)
        dtype = cond.embeds.dtype
        controls = [self._control_branch(c, height, width, req.num_images, dtype, pipe.unet) for c in req.controls]
        prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        denoiser = TextDenoiser(pipe.unet, cond, uncond, controls, req.guess_mode, prediction_type,
                                branch_model=self._branch_model(self.model_spec(req), req))
        shape = (req.num_images, pipe.unet.config.in_channels, height // factor, width // factor)
        return denoiser, shape, dtype

    def _sdxl_conditions(self, pipe, req: Request, guidance: GuidanceSettings, height: int, width: int):
        """SDXL: both CLIP encoders' tokens, the second's pooled embedding, and the micro-conditioning's size ids per
        branch, as StableDiffusionXLPipeline prepares them."""
        with self._encoding:
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                req.prompt, device=self.device, num_images_per_prompt=req.num_images,
                do_classifier_free_guidance=guidance.guided, negative_prompt=req.negative_prompt or None)
        positive = MicroConditioning.from_request(req, height, width)
        cond = PromptCondition(embeds, pooled, positive.time_ids(pipe, req.num_images, embeds.dtype, self.device))
        if negative is None:
            return cond, None
        negative_ids = MicroConditioning.from_request(req, height, width, negative=True)
        negative_time_ids = negative_ids.time_ids(pipe, req.num_images, embeds.dtype, self.device)
        return cond, PromptCondition(negative, negative_pooled, negative_time_ids)

    def _joint_denoiser(self, pipe, req: Request, guidance: GuidanceSettings, height: int, width: int):
        """SD3: CLIP-L, CLIP-G and (unless dropped or absent) T5 tokens side by side, the CLIPs' pooled embeddings,
        through StableDiffusion3Pipeline's encode_prompt; the latent as its prepare_latents shapes it."""
        if req.controls:
            raise EngineError("ControlNet is not offered for SD3 models here; use an SD 1.5 or SDXL model.")
        if req.t5 and pipe.text_encoder_3 is None:
            raise EngineError("This SD3 model has no T5 text encoder; leave T5 unset or drop it (--no-t5) to use "
                              "CLIP only.")
        multiple = pipe.vae_scale_factor * pipe.transformer.config.patch_size  # the latent is cut into patches
        if height % multiple or width % multiple:
            raise EngineError(f"This SD3 model needs a width and height that are multiples of {multiple}; "
                              f"{width}x{height} is not.")
        encoder = pipe if req.t5 is not False else _without_t5(pipe)
        with self._encoding:
            embeds, negative, pooled, negative_pooled = encoder.encode_prompt(
                req.prompt, None, None, device=self.device, num_images_per_prompt=req.num_images,
                do_classifier_free_guidance=guidance.guided, negative_prompt=req.negative_prompt or None)
        cond = PromptCondition(embeds, pooled)
        uncond = None if negative is None else PromptCondition(negative, negative_pooled)
        denoiser = JointDenoiser(pipe.transformer, cond, uncond)
        factor = pipe.vae_scale_factor
        shape = (req.num_images, pipe.transformer.config.in_channels, height // factor, width // factor)
        return denoiser, shape, embeds.dtype

    def _control_branch(self, control: ControlSpec, height: int, width: int, batch: int, dtype,
                        unet) -> ControlBranch:
        name = control.controlnet or default_model("controlnet", control.control_type)
        controlnet = self.loaded(self.resolve(name, "controlnet"))
        _check_fits(controlnet, unet, name)
        processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
        image = processor.preprocess(control.image, height=height, width=width).to(dtype=torch.float32)
        image = image.repeat_interleave(batch, dim=0).to(device=self.device, dtype=dtype)  # (B, 3, H, W)
        return ControlBranch(controlnet, image, control.scale, control.start, control.end)

    def detect_pose(self, image: Image.Image) -> Image.Image:
        """An OpenPose skeleton of a photo (controlnet_aux's detector is a torch model, so it runs like the others)."""
        from .control.pose import detect_pose

        return self.runner.call(detect_pose, image)

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
            shown = label if len(label) <= 40 else label[:37] + "..."
            raise EngineError(f"Unknown class '{shown}'; this model knows: {known or 'class ids only'}.")
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
        classifier = self.loaded(self.resolve(req.classifier or default_model("classifier"), "classifier"))
        label = req.class_label
        if label is None:
            raise EngineError("Classifier guidance needs a class to steer toward.")
        label_id = classifier.label_id(label)
        labels = torch.tensor([label_id] * req.num_images, device=self.device)
        return with_classifier_guidance(model_fn, classifier, labels, req.guidance.classifier_scale, record)

    def _reporter(self, pipe, req: Request, watch: "_Watch", previews):
        if watch.callback is None and not watch.preview_steps and watch.cancel is None and watch.limit is None:
            return None
        # The first live preview comes after twice the interval: a run done within a second needs none, and the
        # first steps' x0 estimates are mostly noise.
        last_live = [time.perf_counter() + (watch.live_every_s or 0.0)]

        def report(info: dict[str, Any]) -> None:
            entered = time.perf_counter()
            try:
                observe(info)
            finally:
                report.seconds += time.perf_counter() - entered

        def observe(info: dict[str, Any]) -> None:
            if watch.cancel is not None and watch.cancel.is_set():
                raise Stopped(f"The run was stopped after {info['i'] + 1} of {info['num_steps']} steps.")
            if watch.limit is not None and info["i"] + 1 < info["num_steps"] and watch.limit.passed():
                raise _Overran(info["i"] + 1, info["num_steps"], info["denoised"])
            extra: dict[str, Any] = {}
            if info["i"] in watch.preview_steps:
                extra["preview"] = self.decode(pipe, info["denoised"], None, req.task == "class")
                previews.append((info["i"], extra["preview"]))
            now = time.perf_counter()
            if watch.live_every_s is not None and now - last_live[0] >= watch.live_every_s:
                last_live[0] = now
                extra["live"] = extra.get("preview") or self.decode(pipe, info["denoised"], None, req.task == "class")
            if watch.callback is not None:
                watch.callback({**info, **extra})

        report.seconds = 0.0  # time spent observing the run (previews, callbacks), which the meter leaves out
        return report

    def decode(self, pipe, latents: torch.Tensor, generator, class_model: bool) -> list[Image.Image]:
        """Latents to PIL images, with the same arithmetic as the matching diffusers pipeline (on the model
        thread)."""
        return self.runner.call(self._decode, pipe, latents, generator, class_model)

    @torch.no_grad()  # on the model thread: grad mode is per thread
    def _decode(self, pipe, latents: torch.Tensor, generator, class_model: bool) -> list[Image.Image]:
        vae = pipe.vae
        if class_model:
            samples = vae.decode(1 / vae.config.scaling_factor * latents).sample  # as DiTPipeline writes it
            return self.postprocess.postprocess(samples, output_type="pil")
        family = model_family(pipe)
        if family == "sd":
            samples = vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        elif family == "sd3":  # StableDiffusion3Pipeline's decode: the VAE's latents are shifted as well as scaled
            samples = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
        else:
            samples = _decode_sdxl(vae, latents)
        return self.postprocess.postprocess(samples, output_type="pil")

    def parameters(self, req: Request, spec: ModelSpec, seed: int, size: tuple[int, int], index: int = 0) -> str:
        """The PNG `parameters` text for one image of this request."""
        nets = [c.controlnet or default_model("controlnet", c.control_type) for c in req.controls]
        return png_parameters(req, spec.name, nets, seed, size, index)


def _raise_unexpected(outcomes: list[tuple[bool, Any] | None]) -> None:
    """Raise the first failure that is not a request's own EngineError: a stop, or a fault."""
    for outcome in outcomes:
        if outcome is not None and not outcome[0]:
            if isinstance(outcome[1], Stopped) or not isinstance(outcome[1], EngineError):
                raise outcome[1]


def _leaves_model_as_is(req: Request) -> bool:
    """Whether a run leaves the shared model untouched, so that another may use it at the same time: a perturbed
    branch such as PAG's or SEG's gives its attention layers their own processors for the run."""
    branch = req.guidance.branch
    return branch is None or branch.leaves_model_as_is


def _check_fits(controlnet, unet, name: str) -> None:
    """One sentence when a ControlNet was trained for another base family (an SD1.5 ControlNet on SDXL, or the
    reverse): its text features, added conditioning or block widths differ from the base UNet's."""
    keys = ("cross_attention_dim", "addition_embed_type", "block_out_channels")
    theirs, ours = ({k: _plain(m.config.get(k)) for k in keys} for m in (controlnet, unet))
    if theirs != ours:
        family = "SDXL" if ours["addition_embed_type"] == "text_time" else "Stable Diffusion 1.x/2.x"
        shown = name if len(name) <= 60 and name.isprintable() else "this ControlNet"
        raise EngineError(f"The ControlNet '{Path(shown).name}' was made for another base model than this "
                          f"{family} one; pick a ControlNet of the same family.")


def _plain(value):
    return tuple(value) if isinstance(value, list) else value


def _native_size(pipe) -> tuple[int, int]:
    """(width, height) of a text pipeline's UNet (or SD3 transformer) sample at its VAE's scale."""
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    side = denoiser.config.sample_size * pipe.vae_scale_factor
    return side, side


def _check_family(req: Request, family: str) -> None:
    """One sentence for what the loaded model's family cannot take: SDXL's size and crop conditioning elsewhere,
    a T5 choice outside SD3, T5 asked of an SD3 model without one, a scheduler of the other kind."""
    kind = FAMILY_NAMES[family]
    if req.micro_conditioning and family != "sdxl":
        flags = ", ".join(flag for name, flag, *_ in MICRO_CONDITIONING if name in req.micro_conditioning)
        raise EngineError(f"Size and crop conditioning ({flags}) needs an SDXL model; this model is {kind}.")
    if req.t5 is not None and family != "sd3":
        raise EngineError(f"The T5 choice (--t5, --no-t5) belongs to SD3 models; this model is {kind}.")
    if family == "sd3" and (req.guidance.classifier_scale > 0 or req.classifier):
        raise EngineError("Classifier guidance needs a model whose classifier reads its latents; SD3 has none here.")
    check_scheduler(req.scheduler, flow=family == "sd3")


def _branch_for_family(req: Request, family: str) -> Request:
    """The request as the model's family runs its guider's perturbed branch: one sentence for what the branch
    refuses there (AutoGuidance on SD3, class models or with ControlNet), and the values the family takes where the
    request left them at their defaults (PAG's and SEG's `mid` on SD3 is `blocks.1`, diffusers' SD3 PAG default), so
    the PNG text and the reproduce command name the layers the run used."""
    branch = req.guidance.branch
    refusal = branch.refusal(family, bool(req.controls)) if branch is not None else None
    if refusal:
        raise EngineError(refusal)
    guidance = req.guidance.for_family(family)
    return req if guidance is req.guidance else replace(req, guidance=guidance)


def _without_t5(pipe):
    """The same SD3 pipeline without its T5 encoder, whose prompt then is CLIP-L and CLIP-G only (T5's tokens are
    zeros, as StableDiffusion3Pipeline writes them when text_encoder_3 is None); the modules are shared."""
    parts = {**pipe.components, "text_encoder_3": None, "tokenizer_3": None}
    return type(pipe)(**parts)


def _flow_shift(scheduler, pipe, latent_shape) -> dict:
    """set_timesteps' `mu` for a flow scheduler with dynamic shifting, as StableDiffusion3Pipeline computes it."""
    config = scheduler.config
    if not config.get("use_dynamic_shifting"):
        return {}
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    patch = pipe.transformer.config.patch_size
    seq_len = (latent_shape[-2] // patch) * (latent_shape[-1] // patch)
    return {"mu": calculate_shift(seq_len, config.get("base_image_seq_len", 256),
                                  config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                  config.get("max_shift", 1.16))}


def _decode_sdxl(vae, latents: torch.Tensor) -> torch.Tensor:
    """StableDiffusionXLPipeline's decode: latents un-normalised by the VAE's mean and std where it has them, and
    a half-precision VAE that asks for it upcast to float32 for the decode (SDXL's VAE overflows in float16)."""
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)
        latents = latents.float()
    config = vae.config
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    try:
        return vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
