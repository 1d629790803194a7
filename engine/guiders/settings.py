"""GuidanceSettings: which method, its scale and every declared parameter's value for one request."""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import EngineError
from .base import Guider, Param
from .branch import Branch
from .registry import GUIDERS, method_names, modifiers, owners


class GuidanceSettings:
    """Method, scale (or a per-image tuple), the values of the method's and the modifiers' declared parameters, and
    the classifier-guidance scale (a wrapper around the model function, not a guider). Immutable and hashable."""

    __slots__ = ("method", "scale", "values", "classifier_scale")

    def __init__(self, method: str = "cfg", scale: float | tuple[float, ...] = 7.5, *, classifier_scale: float = 0.0,
                 **values: Any):
        allowed = {p.name: p for p in self.declared_for(method)}
        for name in values:
            if name not in allowed:
                raise EngineError(f"The guidance '{method}' takes no parameter '{name}'.")
        filled = {name: values.get(name, p.default) for name, p in allowed.items()}
        if "interval" in filled:
            filled["interval"] = tuple(filled["interval"])
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "scale", tuple(scale) if isinstance(scale, list) else scale)
        object.__setattr__(self, "values", filled)
        object.__setattr__(self, "classifier_scale", classifier_scale)

    @staticmethod
    def declared_for(method: str) -> list[Param]:
        """The parameters a run of `method` takes: its own, then the modifiers' when the method guides at all."""
        cls = GUIDERS.get(method)
        if cls is None:
            return []
        return [*cls.params, *(p for m in modifiers() if cls.guided for p in m.params)]

    @classmethod
    def from_values(cls, method: str, scale, values: Mapping[str, Any], *, classifier_scale: float = 0.0,
                    strict: bool = False) -> "GuidanceSettings":
        """Settings from a mapping holding any declared parameters (every UI control, or every CLI flag): the
        method's and the modifiers' are taken. With `strict`, a value given (not None) for a parameter this method
        does not take is refused, so a CLI flag is never silently ignored."""
        wanted = {p.name for p in cls.declared_for(method)}
        if strict:
            for name, value in values.items():
                if value is not None and name not in wanted:
                    others = ", ".join(owners(name)) or "no method"
                    raise EngineError(f"--{name.replace('_', '-')} belongs to {others}; it does nothing with "
                                      f"--guidance {method}.")
        taken = {k: v for k, v in values.items() if k in wanted and v is not None}
        return cls(method, scale, classifier_scale=classifier_scale, **taken)

    def __setattr__(self, name, value):
        raise AttributeError("GuidanceSettings is immutable; use replace().")

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def replace(self, **changes: Any) -> "GuidanceSettings":
        method = changes.pop("method", self.method)
        scale = changes.pop("scale", self.scale)
        classifier_scale = changes.pop("classifier_scale", self.classifier_scale)
        values = {k: v for k, v in self.values.items() if k in {p.name for p in self.declared_for(method)}}
        return GuidanceSettings(method, scale, classifier_scale=classifier_scale, **{**values, **changes})

    def _key(self):
        return (self.method, self.scale, tuple(sorted(self.values.items())), self.classifier_scale)

    def __eq__(self, other) -> bool:
        return isinstance(other, GuidanceSettings) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        values = "".join(f", {k}={v!r}" for k, v in self.values.items())
        return f"GuidanceSettings({self.method!r}, {self.scale!r}{values}, classifier_scale={self.classifier_scale!r})"

    @property
    def scales(self) -> tuple[float, ...]:
        return self.scale if isinstance(self.scale, tuple) else (self.scale,)

    @property
    def guided(self) -> bool:
        """Whether any step may run the unconditional branch."""
        cls = GUIDERS.get(self.method)
        return cls is not None and cls.unconditional(self.values, self.scales)

    @property
    def perturbed(self) -> bool:
        """Whether any step may run a perturbed branch (PAG, SEG, AutoGuidance)."""
        return self.branch is not None

    @property
    def branch(self) -> Branch | None:
        """The perturbed branch this run needs (engine/guiders/branch.py), or None: the method has none, or these
        values never run it (a perturbation scale of 0, AutoGuidance at scale 1)."""
        cls = GUIDERS.get(self.method)
        if cls is None or not cls.perturbs(self.values, self.scales):
            return None
        return cls.branch(self.values)

    def for_family(self, family: str) -> "GuidanceSettings":
        """These settings as a model family runs them: the values the method's branch takes on that family where
        they were left at their defaults (PAG's and SEG's layers on SD3), so that the PNG text and the reproduce
        command name what ran."""
        cls = GUIDERS.get(self.method)
        branch = cls.branch(self.values) if cls is not None else None
        changes = branch.family_values(family) if branch is not None else {}
        return self.replace(**changes) if changes else self

    def check(self) -> None:
        """Unknown method or a value out of its declared range: one sentence."""
        if self.method not in GUIDERS:
            raise EngineError(f"Unknown guidance '{self.method}'; choose one of {', '.join(method_names())}.")
        params = {p.name: p for p in self.declared_for(self.method)}
        for name, value in self.values.items():
            params[name].check(value)

    def build(self) -> Guider:
        """The guider object for one run: the method, wrapped by each modifier."""
        self.check()
        cls = GUIDERS[self.method]
        own = {p.name: self.values[p.name] for p in cls.params}
        guider: Guider = cls(self.scale, **own)
        if cls.guided:
            for modifier in modifiers():
                guider = modifier(guider, **{p.name: self.values[p.name] for p in modifier.params})
        return guider

    def fields(self) -> list[tuple[Param, Any]]:
        """(param, value) pairs a record of this run shows: the method's always, a modifier's when it acts."""
        cls = GUIDERS.get(self.method)
        if cls is None:
            return []
        shown = [(p, self.values[p.name]) for p in cls.params]
        for modifier in modifiers() if cls.guided else ():
            values = {p.name: self.values[p.name] for p in modifier.params}
            if modifier.active(values):
                shown += [(p, values[p.name]) for p in modifier.params]
        return shown

    def cli_fields(self) -> list[tuple[Param, Any]]:
        """(param, value) pairs the reproduce command needs: those that differ from the CLI's defaults."""
        return [(p, v) for p, v in self.fields() if v != p.default]



def compare_rows() -> dict[str, GuidanceSettings]:
    """The Compare tab's rows: one per guided method at the UI's starting values (or the rows a guider declares),
    then the rows modifiers declare (e.g. CFG + rescale)."""
    rows: dict[str, GuidanceSettings] = {}
    for cls in [*(GUIDERS[n] for n in method_names()), *modifiers()]:
        declared = cls.rows if cls.rows is not None else {cls.label: {}}
        for label, values in declared.items():
            values = dict(values)
            method = values.pop("method", cls.name)
            start = {p.name: p.start_value for p in GUIDERS[method].params}
            rows[label] = GuidanceSettings(method, 1.0, **{**start, **values})
    return rows


MAX_SPEC_CHARS = 300


def _canon(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _registered(name: str) -> str | None:
    """The registered method `name` means (any case, '-' or '_'), or None."""
    return next((n for n in GUIDERS if _canon(n) == _canon(name)), None)


def _spec_value(param: Param, text: str, spec: str) -> Any:
    """A parameter's value from its text in a spec: a number, a range written 'start-end' or 'start/end', or text;
    then the parameter's own check."""
    text = text.strip()
    if param.kind == "text":
        return param.check(text)
    parts = text.replace("/", " ").replace("-", " -").split() if param.kind == "range" else [text]
    if param.kind == "range" and len(parts) == 2 and parts[1].startswith("-"):
        parts[1] = parts[1][1:]  # the dash between the two numbers, not a sign
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != (2 if param.kind == "range" else 1):
        form = "two numbers like 0.2-0.8" if param.kind == "range" else "a number"
        raise EngineError(f"The {param.noun} in '{spec}' must be {form}, not '{text}'.")
    if param.kind == "int" and numbers[0].is_integer():
        numbers[0] = int(numbers[0])
    return param.check(tuple(numbers) if param.kind == "range" else numbers[0])


def parse_method_spec(text: str) -> tuple[str, GuidanceSettings]:
    """'apg:eta=0:momentum=-0.5' -> (label, settings at scale 1): a registered method (any case, '-' or '_') and
    name=value pairs of its declared parameters, the others at their declared (CLI) defaults. The label is the spec
    written canonically (the method's name, then each given parameter as the PNG text writes it). Unknown method,
    unknown parameter or a bad value: one sentence."""
    if not isinstance(text, str) or not text.strip():
        raise EngineError("Write a guidance method like 'apg:eta=0:momentum=-0.5'; the spec is empty.")
    if len(text) > MAX_SPEC_CHARS:
        raise EngineError(f"A method spec may be at most {MAX_SPEC_CHARS} characters long, not {len(text)}.")
    spec = text.strip()
    name, *pairs = spec.split(":")
    method = _registered(name)
    if method is None:
        raise EngineError(f"Unknown guidance '{name.strip()}'; choose one of {', '.join(method_names())}.")
    declared = {_canon(p.name): p for p in GuidanceSettings.declared_for(method)}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EngineError(f"Write each parameter of '{spec}' as name=value, like 'apg:eta=0'; got '{pair}'.")
        param = declared.get(_canon(key))
        if param is None:
            known = ", ".join(p.name for p in declared.values()) or "none"
            where = "; the scale is given apart from the method" if _canon(key) == "scale" else f"; it takes: {known}"
            raise EngineError(f"The guidance '{method}' takes no parameter '{key.strip()}'{where}.")
        if param.name in values:
            raise EngineError(f"The parameter '{param.name}' is given twice in '{spec}'.")
        values[param.name] = _spec_value(param, value, spec)
    settings = GuidanceSettings(method, 1.0, **values)
    settings.check()
    label = ":".join([method, *(f"{n}={p.text(values[n])}" for n, p in
                                ((p.name, p) for p in GuidanceSettings.declared_for(method)) if n in values)])
    return label, settings


def _ends_in_text(spec: str) -> bool:
    """Whether a spec's last name=value pair is a text parameter's (whose value may hold commas)."""
    name, *pairs = spec.split(":")
    method = _registered(name)
    key = pairs[-1].partition("=")[0] if pairs else ""
    return method is not None and any(_canon(p.name) == _canon(key) and p.kind == "text"
                                      for p in GuidanceSettings.declared_for(method))


def split_method_specs(text: str) -> list[str]:
    """'cfg,apg:eta=0,pag:pag_layers=mid,up.0' -> ['cfg', 'apg:eta=0', 'pag:pag_layers=mid,up.0']: the specs of a
    comma list, where a comma inside a text parameter's value (a layer list) stays in it: a piece that names no
    method continues the spec before it when that spec ends in a text parameter."""
    specs: list[str] = []
    for piece in text.split(","):
        if specs and _registered(piece.split(":")[0]) is None and _ends_in_text(specs[-1]):
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return [spec.strip() for spec in specs if spec.strip()]
