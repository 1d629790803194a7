"""Load each model once per (source, device, dtype), thread-safely, through diffusers' from_pretrained."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, DiffusionPipeline, UNet2DConditionModel

from .cpu_attention import SmallHeadKernel, use_small_head_attention
from .errors import EngineError
from .registry import ModelSpec, available_offline


def pick_device() -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """Half precision on CUDA, full precision elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


@dataclass
class Loaded:
    """A loaded model: a diffusers pipeline (text, class) or a single module (ControlNet, classifier)."""

    spec: ModelSpec
    obj: Any


def _load(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> Any:
    common = dict(dtype=dtype, use_safetensors=True)
    if spec.kind == "controlnet":
        return ControlNetModel.from_pretrained(spec.source, **common).to(device).eval()
    if spec.kind == "unet":  # a bare UNet: the weak model of AutoGuidance
        return UNet2DConditionModel.from_pretrained(spec.source, **common).to(device).eval()
    if spec.kind == "classifier":
        from .classifier import NoiseAwareClassifier  # the lab's own model class

        return NoiseAwareClassifier.from_pretrained(spec.source, **common).to(device).eval()
    extra = dict(safety_checker=None, requires_safety_checker=False) if spec.kind == "text" else {}
    pipe = DiffusionPipeline.from_pretrained(spec.source, **common, **extra).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class ModelStore:
    """Loads each model once; concurrent first requests for one model wait for a single load."""

    def __init__(self, device: torch.device | None = None, dtype: torch.dtype | None = None):
        self.device = device or pick_device()
        self.dtype = dtype or pick_dtype(self.device)
        self._cache: dict[tuple, Loaded] = {}
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self.loads = 0  # how many loads actually ran; the tests hold the cache to it
        self.attention_kernel = SmallHeadKernel() if self.device.type == "cpu" else None

    def get(self, spec: ModelSpec) -> Loaded:
        key = (spec.source, spec.kind, str(self.device), self.dtype)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._cache:
                self._cache[key] = Loaded(spec, self._speed_up(self._load_or_explain(spec)))
                self.loads += 1
            return self._cache[key]

    def _load_or_explain(self, spec: ModelSpec) -> Any:
        try:
            return _load(spec, self.device, self.dtype)
        except EngineError:
            raise
        except Exception as exc:  # from_pretrained raises many types; people need one sentence
            offline = ", ".join(available_offline()) or "none are present"
            if spec.is_local:
                logging.getLogger("guidance_lab").warning("loading %s failed", spec.source, exc_info=exc)
                raise EngineError(f"The model folder '{Path(spec.source).name}' could not be loaded "
                                  f"({type(exc).__name__}); the server's log has the details.") from exc
            raise EngineError(f"The model '{spec.name}' could not be fetched from the Hugging Face hub (no network "
                              f"or an unknown id); the offline models that work here are: {offline}.") from exc

    def _speed_up(self, obj: Any) -> Any:
        """On the CPU, the UNet and ControlNets attend through the small-head kernel (engine/cpu_attention.py)."""
        if self.attention_kernel is not None:
            bare = obj if isinstance(obj, (ControlNetModel, UNet2DConditionModel)) else None
            for model in (getattr(obj, "unet", None), bare):
                if model is not None:
                    use_small_head_attention(model, self.attention_kernel)
        return obj
