"""What a guidance method is to the lab: declared parameters, and the few calls the denoising loop makes.

A guider class declares its parameters once (`Param`); from those the lab generates the CLI flags, the range checks,
the PNG `parameters` fields, the reproduce command, the UI controls and the Compare tab's rows. One guider object is
built per run, so it may keep state across steps (APG's momentum). Modifiers (rescale, interval) wrap whichever
method was picked. The habit is diffusers' guiders (src/diffusers/guiders) and k-diffusion's model wrappers: the
per-step decision lives on the object, the pure math stays a module function beside it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import EngineError

if TYPE_CHECKING:
    from ..sampler import Step
    from .branch import Branch


@dataclass(frozen=True)
class Param:
    """One declared parameter: name (the API keyword; the CLI flag is --name-with-dashes), default, allowed range,
    label (the UI label, the PNG field and the noun of error sentences) and a one-line help."""

    name: str
    default: Any
    low: float
    high: float
    label: str
    help: str = ""
    kind: str = "float"  # float | int | range (a (start, end) pair inside [low, high], start <= end) | text
    pattern: str = ""  # text: the whole value must match this regular expression (low, high: unused)
    step: float = 0.05  # the UI slider's step
    ui_default: Any = None  # where the UI and API start when that differs from the CLI's default
    ui_range: tuple[float, float] | None = None  # a narrower UI slider than the checks allow

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def api_names(self) -> tuple[str, ...]:
        """The API keywords: the name, or name_start and name_end for a range."""
        return (f"{self.name}_start", f"{self.name}_end") if self.kind == "range" else (self.name,)

    @property
    def start_value(self) -> Any:
        return self.default if self.ui_default is None else self.ui_default

    @property
    def noun(self) -> str:
        """The label inside a sentence: 'Guidance eta' reads 'guidance eta', 'APG momentum' stays."""
        return self.label if self.label[1:2].isupper() else self.label[:1].lower() + self.label[1:]

    def check(self, value: Any) -> Any:
        """The value in its kind, or one sentence saying why not."""
        if self.kind == "text":
            if not isinstance(value, str) or len(value) > 200 or not re.fullmatch(self.pattern, value.strip()):
                shown = repr(value)[:60]
                raise EngineError(f"The {self.noun} is written like {self.default!r}; {shown} is not.")
            return value.strip()
        if self.kind == "range":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise EngineError(f"The {self.noun} must be a (start, end) pair, not {value!r}.")
            start, end = (self._number(v, f"{self.noun} {part}") for v, part in zip(value, ("start", "end")))
            if start > end:
                raise EngineError(f"The {self.noun} must start before it ends; {start:g} > {end:g}.")
            return (start, end)
        return self._number(value, self.noun)

    def _number(self, value: Any, noun: str) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EngineError(f"The {noun} must be a finite number, not {value!r}.")
        if self.kind == "int" and value != int(value):
            raise EngineError(f"The {noun} must be a whole number, not {value!r}.")
        if not self.low <= value <= self.high:
            raise EngineError(f"The {noun} must lie between {self.low:g} and {self.high:g}; {value:g} does not.")
        return int(value) if self.kind == "int" else float(value)

    def text(self, value: Any) -> str:
        """The value as the PNG text and the reproduce command write it."""
        if self.kind == "range":
            return f"{value[0]:g}-{value[1]:g}"
        return str(value) if self.kind in ("int", "text") else f"{value:g}"

    def cli_args(self, value: Any) -> list[str]:
        if self.kind == "range":
            return [self.flag, f"{value[0]:g}", f"{value[1]:g}"]
        return [self.flag, str(value) if self.kind in ("int", "text") else f"{value:g}"]


class Guider:
    """A guidance method for one run. Subclasses declare `name`, `label`, `paper`, `params` and write `guide`."""

    name: ClassVar[str]
    label: ClassVar[str]  # short: the Compare row and the PNG text
    note: ClassVar[str] = ""  # a hint beside the label in the method menu
    paper: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    order: ClassVar[int] = 100  # position in the menus
    guided: ClassVar[bool] = True  # False: the method never guides (no modifiers, no branch but c)
    uses_uncond: ClassVar[bool] = True  # False: a guided method that never runs the unconditional branch
    perturbation: ClassVar[bool] = False  # the method declares a perturbed `branch` (set from that declaration)
    space: ClassVar[str] = "eps"  # eps | x0: where `guide` combines the predictions
    plain_at_one: ClassVar[bool] = True  # at scale 1 every step is the conditional prediction alone
    rows: ClassVar[dict[str, dict] | None] = None  # Compare rows {label: values}; None: one row at the UI defaults

    def __init_subclass__(cls, **declared: Any):
        """The declaration as class keywords: `class CFG(Guider, name="cfg", label="CFG", paper=...)`."""
        super().__init_subclass__()
        for key, value in declared.items():
            if key not in Guider.__annotations__:
                raise TypeError(f"{cls.__name__}: unknown guider declaration {key!r}.")
            setattr(cls, key, value)
        if "branch" in vars(cls):
            cls.perturbation = True

    def __init__(self, scale: float | torch.Tensor | tuple[float, ...], **values: Any):
        self.scale = scale
        self.values = values

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(self.scale) if isinstance(self.scale, tuple) else (self.scale,)

    def scale_like(self, like: torch.Tensor) -> float | torch.Tensor:
        """The scale, or per-image scales shaped (B, 1, ...) to broadcast against a prediction."""
        if not isinstance(self.scale, tuple):
            return self.scale
        return torch.tensor(self.scale, dtype=like.dtype, device=like.device).view(-1, *[1] * (like.ndim - 1))

    @classmethod
    def unconditional(cls, values: dict[str, Any], scales: tuple[float, ...]) -> bool:
        """Whether a run with these values needs the unconditional branch at all (at scale 1 most methods are c)."""
        return cls.guided and cls.uses_uncond and not all(s == 1 for s in scales)

    def needs_uncond(self, step: "Step") -> bool:
        """Whether this step runs the unconditional branch; where guidance cannot change c it is skipped."""
        return type(self).unconditional(self.values, self.scales)

    def needs_perturbed(self, step: "Step") -> bool:
        """Whether this step runs the perturbed branch (methods with a `branch`)."""
        return type(self).perturbs(self.values, self.scales)

    @classmethod
    def branch(cls, values: dict[str, Any]) -> "Branch | None":
        """The third, worse prediction this method guides away from with these values (engine/guiders/branch.py:
        PAG's identity attention, SEG's blurred queries, AutoGuidance's weak model), or None."""
        return None

    @classmethod
    def perturbs(cls, values: dict[str, Any], scales: tuple[float, ...]) -> bool:
        """Whether a run with these values needs its perturbed branch at all (only methods with a `branch`)."""
        return False

    def early(self, x: torch.Tensor, step: "Step") -> torch.Tensor | None:
        """A prediction that replaces the model call at this step (CFG-Zero*'s zero-init), or None."""
        return None

    def combine(self, c: torch.Tensor, u: torch.Tensor | None, x: torch.Tensor, step: "Step",
                p: torch.Tensor | None = None) -> torch.Tensor:
        """Guided eps from the conditional, unconditional (None when not run) and perturbed (None when not run) eps,
        through `guide` or, with a perturbed branch, `guide_perturbed`, in the method's own space."""
        if self.space == "x0":
            c, u, p = (None if v is None else step.denoised(v, x) for v in (c, u, p))
            return step.from_x0(self._guide(c, u, p, step), x)
        return self._guide(c, u, p, step)

    def _guide(self, c, u, p, step):
        return self.guide(c, u, step) if p is None else self.guide_perturbed(c, u, p, step)

    def guide(self, c: torch.Tensor, u: torch.Tensor, step: "Step") -> torch.Tensor:
        raise NotImplementedError

    def guide_perturbed(self, c: torch.Tensor, u: torch.Tensor | None, p: torch.Tensor, step: "Step") -> torch.Tensor:
        """With the perturbed branch p: u is None on steps (or scales) that skip the unconditional branch."""
        raise NotImplementedError

    @classmethod
    def menu_label(cls) -> str:
        return f"{cls.label} ({cls.note})" if cls.note else cls.label


class Modifier(Guider):
    """Wraps the picked method: changes when it guides or what its guided prediction becomes."""

    def __init__(self, inner: Guider, **values: Any):
        super().__init__(inner.scale, **values)
        self.inner = inner
        self.space = inner.space

    @classmethod
    def active(cls, values: dict[str, Any]) -> bool:
        """Whether the modifier changes anything (its PNG fields and CLI flags are written only then)."""
        return any(values[p.name] != p.default for p in cls.params)

    def needs_uncond(self, step: "Step") -> bool:
        return self.inner.needs_uncond(step)

    def needs_perturbed(self, step: "Step") -> bool:
        return self.inner.needs_perturbed(step)

    def early(self, x: torch.Tensor, step: "Step") -> torch.Tensor | None:
        return self.inner.early(x, step)

    def _guide(self, c, u, p, step):
        return self.inner._guide(c, u, p, step)

    def guide(self, c: torch.Tensor, u: torch.Tensor, step: "Step") -> torch.Tensor:
        return self._guide(c, u, None, step)

    def guide_perturbed(self, c, u, p, step):
        return self._guide(c, u, p, step)


# Shared by the projected methods (Perp-CFG, APG): the weight kept of the guidance's parallel part.
ETA = Param("eta", 0.0, 0.0, 1.0, "Guidance eta", "weight of the parallel part: 0 drops it, 1 keeps it (plain CFG)")


def dims(x: torch.Tensor) -> list[int]:
    return list(range(1, x.ndim))


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product in float64, shaped to broadcast against `a`."""
    return (a.double() * b.double()).sum(dim=dims(a), keepdim=True)
