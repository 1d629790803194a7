"""Which models each tab offers: the project's own (offline, CPU), hub models (GPU), or folders given at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.control.prepare import CONTROL_TYPES
from engine.errors import EngineError
from engine.models.registry import REGISTRY, ModelSpec, default_model, folder_under, resolve

KINDS = ("text", "class", "classifier")


@dataclass
class ModelChoices:
    """Per task: the names offered in the model dropdowns, the first being the default; ControlNets per type."""

    text: list[str]
    classes: list[str]
    classifier: list[str]
    controlnet: dict[str, list[str]] = field(default_factory=dict)
    steps: int = 25  # default sampling steps the tabs start with
    root: Path | None = None  # LAB_MODEL_DIR: model folders under it may be named too
    allow_any: bool = False  # the operator's --allow-any-model: any local folder or hub id

    def offered(self, kind: str) -> list[str]:
        if kind == "controlnet":
            return list(dict.fromkeys(n for names in self.controlnet.values() for n in names))
        return list({"text": self.text, "class": self.classes, "classifier": self.classifier}[kind])

    def pick(self, name, kind: str, default: str | None = None) -> str | None:
        """The model a request names, if this app serves it: one it offers (empty = `default`, else the kind's
        default), a folder under LAB_MODEL_DIR, or anything when the operator allows any model. Anything else gets
        one sentence listing what is offered; nothing is looked up on disk or on the hub before that."""
        if name is None or name == "":
            return default if default is not None else (self.default(kind) if kind != "controlnet" else None)
        offered = self.offered(kind)
        valid = isinstance(name, str) and len(name) <= 1024 and name.isprintable() and _encodable(name)
        if valid and (name in offered or self.allow_any or folder_under(self.root, name) is not None):
            return name
        label = {"text": "text-to-image model", "class": "class-conditional model", "classifier": "classifier",
                 "controlnet": "ControlNet"}[kind]
        raise EngineError(f"Unknown {label} {shown_name(name)}; this app offers: {', '.join(offered) or 'none'}.")

    def resolve(self, name: str, kind: str | None = None) -> ModelSpec:
        """The spec of a name this app may serve; folders under LAB_MODEL_DIR by their names there, as the engine
        (given the same root) resolves them."""
        return resolve(name, kind, self.root)

    def default(self, kind: str) -> str | None:
        names = {"text": self.text, "class": self.classes, "classifier": self.classifier}[kind]
        return names[0] if names else None

    def default_controlnet(self, control_type: str) -> str | None:
        names = self.controlnet.get(control_type) or []
        return names[0] if names else None

    def missing(self) -> list[str]:
        """Default models that cannot be loaded here, each with the reason (the registry's sentence)."""
        names = [self.default(k) for k in KINDS] + [self.default_controlnet(t) for t in CONTROL_TYPES]
        reasons = []
        for name in dict.fromkeys(n for n in names if n):
            try:
                self.resolve(name)
            except EngineError as exc:
                reasons.append(str(exc))
        return reasons


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(name) -> str:
    """A model name as an error quotes it: short, and only if it is text."""
    if not isinstance(name, str):
        return f"({type(name).__name__})"
    return repr(name if len(name) <= 40 else name[:37] + "...")


def registry_choices(on_gpu: bool) -> ModelChoices:
    """The project's models first on a CPU; on a GPU the hub models first (GPU_DEFAULTS' pick leading), the
    project's own still offered after them."""

    def names(kind: str, control_type: str | None = None) -> list[str]:
        specs = [s for s in REGISTRY.values() if s.kind == kind and s.control_type == control_type]
        lab = [s.name for s in specs if s.offline]
        hub = [s.name for s in specs if not s.offline]
        lab.sort(key=lambda n: n != default_model(kind, control_type))
        hub.sort(key=lambda n: n != default_model(kind, control_type, on_gpu=True))
        return hub + lab if on_gpu else lab + hub

    # The project's classifier reads lab-dit's latents only, so a GPU, whose class tab starts on DiT-XL/2, offers
    # none: the tab then starts without classifier guidance instead of pairing DiT-XL/2 with a classifier it breaks.
    classifiers = [] if on_gpu else names("classifier")
    return ModelChoices(names("text"), names("class"), classifiers, {t: names("controlnet", t) for t in CONTROL_TYPES})


def folder_choices(root: Path, steps: int = 25) -> ModelChoices:
    """Every model folder under `root` (as saved by tests/tiny_models.py or training), sorted by kind."""
    found: dict[str, list[str]] = {"text": [], "class": [], "classifier": [], "controlnet": []}
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        try:
            found[resolve(str(folder)).kind].append(folder.name)  # offered by name, resolved under the root
        except EngineError:
            continue
    if not found["text"]:
        raise EngineError(f"No text-to-image model folder found under '{root}'.")
    return ModelChoices(found["text"], found["class"], found["classifier"],
                        {t: found["controlnet"] for t in CONTROL_TYPES}, steps, root=Path(root))


def choices_from_env(on_gpu: bool, allow_any: bool = False) -> ModelChoices:
    """LAB_MODEL_DIR points every tab at the model folders under it, otherwise the registry; LAB_STEPS sets the
    default number of steps; `allow_any` (or LAB_ALLOW_ANY_MODEL=1) lets requests name any folder or hub id."""
    root = os.environ.get("LAB_MODEL_DIR")
    choices = folder_choices(Path(root)) if root else registry_choices(on_gpu)
    choices.steps = int(os.environ.get("LAB_STEPS", choices.steps))
    choices.allow_any = allow_any or os.environ.get("LAB_ALLOW_ANY_MODEL") == "1"
    return choices
