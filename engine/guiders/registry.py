"""The guiders the lab knows, by name: methods (one picked per run) and modifiers (wrapping every method)."""

from __future__ import annotations

from .base import Guider, Modifier, Param

GUIDERS: dict[str, type[Guider]] = {}
MODIFIERS: dict[str, type[Modifier]] = {}


def register(cls):
    """Class decorator: make a guider (or modifier) available everywhere the lab lists methods."""
    table = MODIFIERS if issubclass(cls, Modifier) else GUIDERS
    if cls.name in GUIDERS or cls.name in MODIFIERS:
        raise ValueError(f"A guider named {cls.name!r} is already registered.")
    for param in cls.params:
        known = declared(param.name)
        if known is not None and known != param:
            raise ValueError(f"{cls.name} declares {param.name!r} differently from another guider.")
    table[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    GUIDERS.pop(name, None)
    MODIFIERS.pop(name, None)


def method_names() -> list[str]:
    """Method names in menu order."""
    return [cls.name for cls in sorted(GUIDERS.values(), key=lambda c: (c.order, c.name))]


def modifiers() -> list[type[Modifier]]:
    """Modifiers in the order they wrap a method (the first wraps it directly)."""
    return sorted(MODIFIERS.values(), key=lambda c: (c.order, c.name))


def all_params() -> list[Param]:
    """Every declared parameter once, methods' first (in menu order), then modifiers'."""
    seen: dict[str, Param] = {}
    for cls in [*(GUIDERS[n] for n in method_names()), *modifiers()]:
        for param in cls.params:
            seen.setdefault(param.name, param)
    return list(seen.values())


def declared(name: str) -> Param | None:
    for cls in [*GUIDERS.values(), *MODIFIERS.values()]:
        for param in cls.params:
            if param.name == name:
                return param
    return None


def owners(name: str) -> list[str]:
    """Names of the methods and modifiers that declare parameter `name`."""
    return [cls.name for cls in [*GUIDERS.values(), *MODIFIERS.values()] if any(p.name == name for p in cls.params)]
