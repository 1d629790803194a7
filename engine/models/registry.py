"""Model names: the project's own offline models, well-known hub models, local folders and hub ids."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import EngineError

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "models"

# What a folder's diffusers class says about the task it serves.
PIPELINE_KINDS = {
    "StableDiffusionPipeline": "text",
    "StableDiffusionControlNetPipeline": "text",
    "StableDiffusionXLPipeline": "text",
    "StableDiffusionXLControlNetPipeline": "text",
    "StableDiffusion3Pipeline": "text",
    "StableDiffusionPAGPipeline": "text",
    "StableDiffusionXLPAGPipeline": "text",
    "StableDiffusion3PAGPipeline": "text",
    "DiTPipeline": "class",
}
MODEL_KINDS = {"ControlNetModel": "controlnet", "SD3ControlNetModel": "controlnet",
               "NoiseAwareClassifier": "classifier", "UNet2DConditionModel": "unet"}
# The model family a folder's diffusers class belongs to: it decides the denoiser, the dtype and the native size.
FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionControlNetPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLControlNetPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusionPAGPipeline": "sd",
    "StableDiffusionXLPAGPipeline": "sdxl",
    "StableDiffusion3PAGPipeline": "sd3",
    "DiTPipeline": "dit",
    "SD3ControlNetModel": "sd3",
}


@dataclass(frozen=True)
class ModelSpec:
    """A named model: where it comes from, the task it serves and the guidance scale it is tuned for."""

    name: str
    source: str
    kind: str  # text | class | controlnet | classifier
    default_scale: float = 7.5
    control_type: str | None = None  # canny | scribble | pose, for ControlNets
    offline: bool = False
    weak: str | None = None  # a weaker UNet of the same model, reading the same prompt embeddings (AutoGuidance)
    family: str | None = None  # sd | sdxl | sd3 | dit; None: read from the folder when it is loaded
    scheduler: str | None = None  # the sampler its makers recommend (None: the lab's default)
    size: int | None = None  # the side in pixels it was trained at (None: its UNet's sample size)

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()


def _lab(name: str, kind: str, scale: float, control_type: str | None = None, weak: str | None = None) -> ModelSpec:
    family = "dit" if kind == "class" else None if kind == "classifier" else "sd"
    return ModelSpec(name, str(ASSETS / name), kind, scale, control_type, offline=True, weak=weak, family=family,
                     scheduler="ddim")


def _hub(name: str, source: str, kind: str, scale: float, family: str, scheduler: str, size: int,
         control_type: str | None = None) -> ModelSpec:
    return ModelSpec(name, source, kind, scale, control_type, family=family, scheduler=scheduler, size=size)


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    _lab("lab-sd", "text", 5.0, weak="lab-sd-weak"),
    _lab("lab-sd-weak", "unet", 5.0),
    _lab("lab-dit", "class", 4.0),
    _lab("lab-classifier", "classifier", 0.0),
    _lab("lab-controlnet-canny", "controlnet", 5.0, "canny"),
    _lab("lab-controlnet-scribble", "controlnet", 5.0, "scribble"),
    _lab("lab-controlnet-pose", "controlnet", 5.0, "pose"),
    # Hub models, each with the scheduler, guidance scale and size its makers' examples use.
    _hub("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "text", 7.5, "sd", "dpm++2m", 512),
    _hub("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "text", 5.0, "sdxl", "euler", 1024),
    _hub("sd35-medium", "stabilityai/stable-diffusion-3.5-medium", "text", 4.5, "sd3", "flow-euler", 1024),
    _hub("dit-xl-2-256", "facebook/DiT-XL-2-256", "class", 4.0, "dit", "dpm++2m", 256),
    _hub("controlnet-canny", "lllyasviel/control_v11p_sd15_canny", "controlnet", 7.5, "sd", "unipc", 512, "canny"),
    _hub("controlnet-scribble", "lllyasviel/control_v11p_sd15_scribble", "controlnet", 7.5, "sd", "unipc", 512,
         "scribble"),
    _hub("controlnet-pose", "lllyasviel/control_v11p_sd15_openpose", "controlnet", 7.5, "sd", "unipc", 512, "pose"),
    _hub("controlnet-sdxl-canny", "diffusers/controlnet-canny-sdxl-1.0", "controlnet", 5.0, "sdxl", "euler", 1024,
         "canny"),
)}

DEFAULTS = {"text": "lab-sd", "class": "lab-dit", "classifier": "lab-classifier"}
CONTROL_DEFAULTS = {"canny": "lab-controlnet-canny", "scribble": "lab-controlnet-scribble",
                    "pose": "lab-controlnet-pose"}
# What a GPU serves first: one family (SD1.5) for text and every control type, so the ControlNet tab's default base
# model and ControlNets fit together; SDXL, SD3.5 and the SDXL ControlNet are offered beside them.
GPU_DEFAULTS = {"text": "sd15", "class": "dit-xl-2-256", "classifier": "lab-classifier"}
GPU_CONTROL_DEFAULTS = {"canny": "controlnet-canny", "scribble": "controlnet-scribble", "pose": "controlnet-pose"}


def available_offline() -> list[str]:
    """Names of the project's own models whose folders are present."""
    return [s.name for s in REGISTRY.values() if s.offline and s.is_local]


def _folder_config(folder: Path) -> tuple[str, dict]:
    """("pipeline" | "model", the parsed model_index.json or config.json) of a diffusers folder, or ("", {})."""
    for filename, level in (("model_index.json", "pipeline"), ("config.json", "model")):
        path = folder / filename
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return "", {}
            return (level, config) if isinstance(config, dict) else ("", {})
    return "", {}


def _folder_kind(folder: Path) -> str | None:
    level, config = _folder_config(folder)
    kinds = {"pipeline": PIPELINE_KINDS, "model": MODEL_KINDS}.get(level, {})
    return kinds.get(config.get("_class_name"))


def detect_family(folder: str | Path) -> str | None:
    """The family (sd, sdxl, sd3, dit) of a diffusers folder in the hub layout, from its model_index.json's
    `_class_name`; a bare ControlNet's from its config (SDXL's take the added text-time embedding)."""
    level, config = _folder_config(Path(folder))
    name = config.get("_class_name")
    if name in FAMILIES:
        return FAMILIES[name]
    if level == "model" and name in ("ControlNetModel", "UNet2DConditionModel"):  # a bare ControlNet or weak UNet
        return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd"
    return None


def recommended_scheduler(spec: ModelSpec) -> str:
    """The scheduler a model runs when none is named: its registry entry's, else flow-euler for a flow-matching
    (SD3) folder and ddim for the rest (a hub id not in the registry: ddim)."""
    return spec.scheduler or ("flow-euler" if spec.family == "sd3" else "ddim")


def _is_dir(name: str) -> bool:
    try:
        return Path(name).is_dir()
    except (OSError, ValueError):  # too long for the file system, or a NUL byte: no folder
        return False


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/")) and " " not in name


def folder_under(root: Path | None, name: str) -> Path | None:
    """The model folder `name` names under `root` (a folder holding model_index.json or config.json, named by a
    path relative to `root` that never leaves it), or None."""
    if root is None or not isinstance(name, str) or not name:
        return None
    try:
        base = Path(root).resolve()
        target = (base / name).resolve()
        inside = not Path(name).is_absolute() and target.is_relative_to(base) and target != base
        return target if inside and any((target / f).is_file() for f in ("model_index.json", "config.json")) else None
    except (OSError, ValueError):  # a name the file system refuses (too long, a NUL byte) names no folder of ours
        return None


def folder_name(root: Path | None, name: str) -> str | None:
    """The one name of the model folder `name` names under `root`: its path relative to `root`, normalised
    (`././lab-sd`, `lab-sd/` and `x/../lab-sd` are all `lab-sd`), or None where `name` names no model folder there."""
    folder = folder_under(root, name)
    return None if folder is None else folder.relative_to(Path(root).resolve()).as_posix()


def resolve(name: str, kind: str | None = None, root: Path | None = None) -> ModelSpec:
    """Turn a registry name, local folder or hub id into a ModelSpec, checking it serves `kind` if given. With
    `root`, a folder under it is named by its path relative to it, and keeps that name: what a server offers from
    its model folder never shows where that folder is; every spelling of one folder resolves to its one name
    (folder_name), and a project model's folder to its registry entry under that name."""
    if (served := folder_name(root, name)) is not None:
        spec = _served_spec(Path(root).resolve() / served, served)
    elif name in REGISTRY:
        spec = REGISTRY[name]
        if spec.offline and not spec.is_local:
            raise EngineError(f"The project's model '{name}' is not in assets/models/; train it with the recipes in "
                              f"training/ or pick another model ({', '.join(available_offline()) or 'none shipped'}).")
    elif _is_dir(name):
        spec = _folder_spec(name, name)
    elif _looks_like_hub_id(name):
        spec = ModelSpec(name, name, kind or "text")
    else:
        known = ", ".join(sorted(REGISTRY))
        raise EngineError(f"Unknown model '{name}': give a local diffusers folder, a hub id like org/name, "
                          f"or one of {known}.")
    if kind is not None and spec.kind != kind:
        raise EngineError(f"The model '{name}' is a {spec.kind} model, but a {kind} model is needed here.")
    return spec


def _served_spec(folder: Path, name: str) -> ModelSpec:
    """The spec of a folder under a server's model folder: the project model's entry where it is one of theirs
    (keeping its weak model, scheduler and scale), else what the folder itself says."""
    for spec in REGISTRY.values():
        if spec.offline and Path(spec.source).resolve() == folder:
            return replace(spec, name=name)
    return _folder_spec(str(folder), name)


def _folder_spec(folder: str, name: str) -> ModelSpec:
    """The spec of a diffusers folder, named `name`."""
    folder_kind = _folder_kind(Path(folder))
    if folder_kind is None:
        raise EngineError(f"The folder '{name}' holds no diffusers model_index.json or config.json the lab "
                          f"knows how to load.")
    return ModelSpec(name, str(Path(folder).resolve()), folder_kind, family=detect_family(folder))


def is_project_model(name: str | None) -> bool:
    """Whether `name` (None: the default text model) is one of the project's own, which the world can judge."""
    try:
        return resolve(name or default_model("text"), "text").offline
    except EngineError:
        return False


def default_model(kind: str, control_type: str | None = None, on_gpu: bool = False) -> str:
    """The default model for a task: the project's own, or on a GPU the hub model GPU_DEFAULTS names."""
    if kind == "controlnet":
        return (GPU_CONTROL_DEFAULTS if on_gpu else CONTROL_DEFAULTS)[control_type]
    return (GPU_DEFAULTS if on_gpu else DEFAULTS)[kind]


def write_id2label(folder: Path, class_names: list[str]) -> None:
    """Store class names in a DiT folder's model_index.json, where DiTPipeline reads its id2label."""
    path = Path(folder) / "model_index.json"
    index = json.loads(path.read_text())
    index["id2label"] = {str(i): name for i, name in enumerate(class_names)}
    path.write_text(json.dumps(index, indent=2))
