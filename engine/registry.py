"""Model names: the project's own offline models, well-known hub models, local folders and hub ids."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import EngineError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"

# What a folder's diffusers class says about the task it serves.
PIPELINE_KINDS = {
    "StableDiffusionPipeline": "text",
    "StableDiffusionControlNetPipeline": "text",
    "DiTPipeline": "class",
}
MODEL_KINDS = {"ControlNetModel": "controlnet", "NoiseAwareClassifier": "classifier", "UNet2DConditionModel": "unet"}


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

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()


def _lab(name: str, kind: str, scale: float, control_type: str | None = None, weak: str | None = None) -> ModelSpec:
    return ModelSpec(name, str(ASSETS / name), kind, scale, control_type, offline=True, weak=weak)


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    _lab("lab-sd", "text", 5.0, weak="lab-sd-weak"),
    _lab("lab-sd-weak", "unet", 5.0),
    _lab("lab-dit", "class", 4.0),
    _lab("lab-classifier", "classifier", 0.0),
    _lab("lab-controlnet-canny", "controlnet", 5.0, "canny"),
    _lab("lab-controlnet-scribble", "controlnet", 5.0, "scribble"),
    _lab("lab-controlnet-pose", "controlnet", 5.0, "pose"),
    ModelSpec("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "text", 7.5),
    ModelSpec("dit-xl-2-256", "facebook/DiT-XL-2-256", "class", 4.0),
    ModelSpec("controlnet-canny", "lllyasviel/control_v11p_sd15_canny", "controlnet", 7.5, "canny"),
    ModelSpec("controlnet-scribble", "lllyasviel/control_v11p_sd15_scribble", "controlnet", 7.5, "scribble"),
    ModelSpec("controlnet-pose", "lllyasviel/control_v11p_sd15_openpose", "controlnet", 7.5, "pose"),
)}

DEFAULTS = {"text": "lab-sd", "class": "lab-dit", "classifier": "lab-classifier"}
CONTROL_DEFAULTS = {"canny": "lab-controlnet-canny", "scribble": "lab-controlnet-scribble",
                    "pose": "lab-controlnet-pose"}


def available_offline() -> list[str]:
    """Names of the project's own models whose folders are present."""
    return [s.name for s in REGISTRY.values() if s.offline and s.is_local]


def _folder_kind(folder: Path) -> str | None:
    for filename, kinds in (("model_index.json", PIPELINE_KINDS), ("config.json", MODEL_KINDS)):
        path = folder / filename
        if path.is_file():
            return kinds.get(json.loads(path.read_text()).get("_class_name"))
    return None


def _is_dir(name: str) -> bool:
    try:
        return Path(name).is_dir()
    except (OSError, ValueError):  # too long for the file system, or a NUL byte: no folder
        return False


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/")) and " " not in name


def resolve(name: str, kind: str | None = None) -> ModelSpec:
    """Turn a registry name, local folder or hub id into a ModelSpec, checking it serves `kind` if given."""
    if name in REGISTRY:
        spec = REGISTRY[name]
        if spec.offline and not spec.is_local:
            raise EngineError(f"The project's model '{name}' is not in assets/models/; train it with the recipes in "
                              f"training/ or pick another model ({', '.join(available_offline()) or 'none shipped'}).")
    elif _is_dir(name):
        folder_kind = _folder_kind(Path(name))
        if folder_kind is None:
            raise EngineError(f"The folder '{name}' holds no diffusers model_index.json or config.json the lab "
                              f"knows how to load.")
        spec = ModelSpec(name, str(Path(name).resolve()), folder_kind)
    elif _looks_like_hub_id(name):
        spec = ModelSpec(name, name, kind or "text")
    else:
        known = ", ".join(sorted(REGISTRY))
        raise EngineError(f"Unknown model '{name}': give a local diffusers folder, a hub id like org/name, "
                          f"or one of {known}.")
    if kind is not None and spec.kind != kind:
        raise EngineError(f"The model '{name}' is a {spec.kind} model, but a {kind} model is needed here.")
    return spec


def is_project_model(name: str | None) -> bool:
    """Whether `name` (None: the default text model) is one of the project's own, which the world can judge."""
    try:
        return resolve(name or default_model("text"), "text").offline
    except EngineError:
        return False


def default_model(kind: str, control_type: str | None = None) -> str:
    """The project's own default model for a task."""
    return CONTROL_DEFAULTS[control_type] if kind == "controlnet" else DEFAULTS[kind]


def write_id2label(folder: Path, class_names: list[str]) -> None:
    """Store class names in a DiT folder's model_index.json, where DiTPipeline reads its id2label."""
    path = Path(folder) / "model_index.json"
    index = json.loads(path.read_text())
    index["id2label"] = {str(i): name for i, name in enumerate(class_names)}
    path.write_text(json.dumps(index, indent=2))
