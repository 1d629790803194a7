"""Which models each tab offers: the project's own (offline, CPU), hub models (GPU), or folders given at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.control.prepare import CONTROL_TYPES
from engine.errors import EngineError
from engine.models.registry import REGISTRY, ModelSpec, default_model, folder_name, resolve

KINDS = ("text", "class", "classifier")
LABELS = {"text": "text-to-image model", "class": "class-conditional model", "classifier": "classifier",
          "controlnet": "ControlNet"}


@dataclass
class ModelChoices:
    """Per task: the names offered in the model dropdowns, the first being the default; ControlNets per type."""

    text: list[str]
    classes: list[str]
    classifier: list[str]
    controlnet: dict[str, list[str]] = field(default_factory=dict)
    steps: int = 25  # default sampling steps the tabs start with
    root: Path | None = None  # LAB_MODEL_DIR: its folders are named by their paths relative to it
    allow_any: bool = False  # the operator's --allow-any-model: any local folder or hub id

    def offered(self, kind: str) -> list[str]:
        if kind == "controlnet":
            return list(dict.fromkeys(n for names in self.controlnet.values() for n in names))
        return list({"text": self.text, "class": self.classes, "classifier": self.classifier}[kind])

    def pick(self, name, kind: str, default: str | None = None) -> str | None:
        """The model a request names, by its one name, if this app serves it: one it offers (empty = `default`, else
        the kind's default; a folder under LAB_MODEL_DIR however its path is spelled), or anything when the operator
        allows any model. Anything else gets one sentence listing what is offered; nothing is loaded before that."""
        if name is None or name == "":
            return default if default is not None else (self.default(kind) if kind != "controlnet" else None)
        valid = isinstance(name, str) and len(name) <= 1024 and name.isprintable() and _encodable(name)
        named = (folder_name(self.root, name) or name) if valid else None
        if named is not None and (named in self.offered(kind) or self.allow_any):
            return named
        raise EngineError(self.refusal(name, named, kind))

    def refusal(self, name, named: str | None, kind: str) -> str:
        """The one sentence for a name this app does not serve as a `kind` model: every name that is no model of
        this app's gets the same one, listing the `kind` models offered."""
        offered = self.offered(kind)
        choices = f"pick one of: {', '.join(offered)}" if offered else f"it offers no {LABELS[kind]} here"
        other = next((k for k in LABELS if k != kind and named is not None and named in self.offered(k)), None)
        if other is not None:
            return f"{shown_name(name)} is a {LABELS[other]}, not a {LABELS[kind]}; {choices}."
        return f"{shown_name(name)} is not a model this server offers; {choices}."

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

    def defaults(self) -> list[tuple[str, str]]:
        """(name, kind) of every tab's default model and each control type's default ControlNet."""
        names = [(self.default(k), k) for k in KINDS]
        names += [(self.default_controlnet(t), "controlnet") for t in CONTROL_TYPES]
        return list(dict.fromkeys((n, k) for n, k in names if n))

    def missing(self) -> list[str]:
        """Default models that cannot be loaded here, each with the reason (the registry's sentence)."""
        reasons = []
        for name in dict.fromkeys(n for n, _ in self.defaults()):
            try:
                self.resolve(name)
            except EngineError as exc:
                reasons.append(str(exc))
        return reasons

    def default_specs(self) -> list[ModelSpec]:
        """The specs of the default models that resolve here, with the default text model's weak UNet: what the
        model store keeps loaded whatever its memory budget."""
        specs = []
        for name, kind in self.defaults():
            try:
                spec = self.resolve(name, kind)
                specs += [spec, self.resolve(spec.weak, "unet")] if spec.weak and kind == "text" else [spec]
            except EngineError:  # missing() says why; nothing to keep
                continue
        return specs


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
    """The models a host can run: on a CPU the project's own only; on a GPU the hub models first (GPU_DEFAULTS'
    pick leading), the project's own still offered after them."""

    def names(kind: str, control_type: str | None = None) -> list[str]:
        specs = [s for s in REGISTRY.values() if s.kind == kind and s.control_type == control_type]
        lab = [s.name for s in specs if s.offline]
        hub = [s.name for s in specs if not s.offline]
        lab.sort(key=lambda n: n != default_model(kind, control_type))
        hub.sort(key=lambda n: n != default_model(kind, control_type, on_gpu=True))
        return hub + lab if on_gpu else lab

    # The project's classifier reads lab-dit's latents only, so a GPU, whose class tab starts on DiT-XL/2, offers
    # none: the tab then starts without classifier guidance instead of pairing DiT-XL/2 with a classifier it breaks.
    classifiers = [] if on_gpu else names("classifier")
    return ModelChoices(names("text"), names("class"), classifiers, {t: names("controlnet", t) for t in CONTROL_TYPES})


def folder_choices(root: Path, steps: int = 25) -> ModelChoices:
    """Every model folder directly under `root` (as saved by tests/tiny_models.py or training, or assets/models),
    by kind, each by its one name (the project's defaults first). Bare UNets (a model's weak version, for
    AutoGuidance) are no pipeline and are not offered; a ControlNet of the project's serves its own control type."""
    root = Path(root)
    if not root.is_dir():
        raise EngineError(f"The model folder '{root}' (LAB_MODEL_DIR) is not a folder.")
    found: dict[str, list[ModelSpec]] = {"text": [], "class": [], "classifier": [], "controlnet": []}
    for folder in sorted(p.name for p in root.iterdir() if p.is_dir()):
        if folder_name(root, folder) != folder:  # no model folder, or a link out of root or to another folder
            continue
        try:
            spec = resolve(folder, None, root)
        except EngineError:
            continue
        if spec.kind in found:
            found[spec.kind].append(spec)
    if not found["text"]:
        raise EngineError(f"No text-to-image model folder found under '{root}'.")

    def names(kind: str, control_type: str | None = None) -> list[str]:
        specs = [s for s in found[kind] if s.control_type in (None, control_type)]
        return sorted((s.name for s in specs), key=lambda n: n != default_model(kind, control_type))

    return ModelChoices(names("text"), names("class"), names("classifier"),
                        {t: names("controlnet", t) for t in CONTROL_TYPES}, steps, root=root)


def choices_from_env(on_gpu: bool, allow_any: bool = False) -> ModelChoices:
    """LAB_MODEL_DIR points every tab at the model folders under it, otherwise the registry's models this host can
    run; LAB_STEPS sets the default number of steps; `allow_any` (or LAB_ALLOW_ANY_MODEL=1) lets requests name any
    folder or hub id."""
    root = os.environ.get("LAB_MODEL_DIR")
    choices = folder_choices(Path(root)) if root else registry_choices(on_gpu)
    choices.steps = int(os.environ.get("LAB_STEPS", choices.steps))
    choices.allow_any = allow_any or os.environ.get("LAB_ALLOW_ANY_MODEL") == "1"
    return choices
