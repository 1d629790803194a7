"""Guidance methods, one file each. Importing the package registers every guider module found in it, so a new
method is one new file (and its test) and nothing else."""

import importlib
import pkgutil

from .base import Guider, Modifier, Param  # noqa: F401
from .registry import GUIDERS, MODIFIERS, all_params, method_names, modifiers, register, unregister  # noqa: F401
from .settings import GuidanceSettings  # noqa: F401

_INFRASTRUCTURE = {"base", "branch", "perturb", "registry", "settings"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")
