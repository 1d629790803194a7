"""Values from the page or the API, read into what a Request takes: each a whole number, a number, a switch, text,
a size pair or a scheduler, or one sentence saying why not."""

from __future__ import annotations

import math
import re

from engine.errors import EngineError
from engine.models.registry import recommended_scheduler
from engine.request import MAX_IMAGES, MAX_SEED

from .inputs import shown

SEED_MAX = MAX_SEED - MAX_IMAGES  # the largest first seed: image k of a run uses seed + k


def whole(name: str, value, low: int, high: int) -> int:
    """A whole number in [low, high] from a UI value (ints exactly, at any size), or one sentence saying why not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineError(f"The {name} must be a whole number, not {shown(value)}.")
    if not low <= value <= high:
        raise EngineError(f"The {name} must be from {low} to {high}, not {shown(value)}.")
    return value


def number(name: str, value) -> float:
    """A finite number from a UI value, or one sentence saying why not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EngineError(f"The {name} must be a finite number, not {shown(value)}.")
    return float(value)


def switch(name: str, value) -> bool:
    """True or false from a UI value, or one sentence."""
    if not isinstance(value, bool):
        raise EngineError(f"The {name} must be true or false, not {shown(value)}.")
    return value


def text(name: str, value) -> str:
    """Text from a UI value: a string that is valid Unicode (no lone surrogates), or one sentence."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EngineError(f"The {name} must be text, not {shown(value)}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EngineError(f"The {name} holds characters that are not valid Unicode text.") from None
    return value


def pair(name: str, value) -> tuple[int, int] | None:
    """'1024 768', '1024x768' or '1024, 768' -> (1024, 768); empty -> None (the model's default); else one sentence.
    The Request checks the range."""
    value = text(name, value).strip()
    if not value:
        return None
    parts = [p for p in re.split(r"[\sx,]+", value.lower()) if p]
    if len(parts) != 2 or not all(re.fullmatch(r"\d{1,6}", p) for p in parts):
        raise EngineError(f"The {name} must be two whole numbers like '1024 1024', or empty for the default.")
    return int(parts[0]), int(parts[1])


def scheduler_choice(models, model, value, kind: str = "text") -> str:
    """An endpoint's scheduler: 'auto' (the default) is the model's recommended one (engine/models/registry.py); a name
    this app does not serve gets ddim here and its one sentence from the run."""
    value = text("scheduler", value) if value is not None else "auto"
    if value not in ("", "auto"):
        return value
    try:
        return recommended_scheduler(models.resolve(models.pick(model, kind), kind))
    except EngineError:
        return "ddim"
