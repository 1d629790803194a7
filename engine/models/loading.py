"""Load each model once per (source, device, dtype), thread-safely, through diffusers' from_pretrained.

On CUDA: half precision (bf16 for SD3, whose makers run it so), diffusers' own SDPA attention, the VAE decoding in
tiles above 1024 px, model CPU offload on GPUs under 16 GB (or when asked), and a bounded number of ControlNets
resident on the GPU, the least recently used moved to the CPU when another is asked for (as hysts' ControlNet Space
swaps its ControlNet beside a resident base pipeline).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, DiffusionPipeline, UNet2DConditionModel

from ..cpu import CpuPath
from ..errors import EngineError
from .registry import FAMILIES, ModelSpec, available_offline, detect_family

OFFLOAD_BELOW_BYTES = 16 * 2**30  # GPUs with less memory keep the pipeline's idle parts on the CPU
TILE_ABOVE_PX = 1024  # the VAE decodes larger images in overlapping tiles of this side
RESIDENT_CONTROLNETS = 3  # ControlNets kept on the GPU at once: as many as one request stacks (engine/request.py)


def pick_device() -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, family: str | None = None) -> torch.dtype:
    """Half precision on CUDA (bfloat16 for SD3 and SD3.5, as their model cards load them), full precision
    elsewhere."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if family == "sd3" else torch.float16


def cuda_memory_bytes() -> int | None:
    """Total memory of the current CUDA device, or None where it cannot be read (no CUDA, or ZeroGPU's start-up
    process, which has no device yet)."""
    try:
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    except Exception:  # no driver, no device, an emulated device: nothing to read
        return None


def wants_offload(device: torch.device, asked: bool | None = None) -> bool:
    """Model CPU offload when asked (`--offload`), else automatically on a CUDA device under 16 GB."""
    if asked is not None or device.type != "cuda":
        return bool(asked) and device.type == "cuda"
    memory = cuda_memory_bytes()
    return memory is not None and memory < OFFLOAD_BELOW_BYTES


def tile_vae_above(vae, pixels: int = TILE_ABOVE_PX) -> None:
    """Decode (and encode) in overlapping tiles only for images larger than `pixels` a side: smaller images decode
    whole, exactly as before."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.enable_tiling()
    vae.tile_sample_min_size = pixels
    vae.tile_latent_min_size = pixels // factor


def attention_processors(model: torch.nn.Module) -> set[str]:
    """Class names of a model's attention processors (AttnProcessor2_0 is diffusers' SDPA one)."""
    return {type(p).__name__ for p in model.attn_processors.values()}


def spec_family(spec: ModelSpec) -> str | None:
    """The family of a spec: the registry's, a local folder's model_index.json, or a hub id's (its model_index.json
    alone is fetched)."""
    if spec.family or spec.kind not in ("text", "class"):
        return spec.family
    if spec.is_local:
        return detect_family(spec.source)
    try:
        config = DiffusionPipeline.load_config(spec.source)
    except Exception:  # no network or no such id: the load that follows says so in one sentence
        return None
    return FAMILIES.get(config.get("_class_name")) if isinstance(config, dict) else None


@dataclass
class Loaded:
    """A loaded model: a diffusers pipeline (text, class) or a single module (ControlNet, classifier)."""

    spec: ModelSpec
    obj: Any


def _load(spec: ModelSpec, device: torch.device, dtype: torch.dtype, offload: bool = False) -> Any:
    common = dict(dtype=dtype, use_safetensors=True)
    if spec.kind == "controlnet":
        return ControlNetModel.from_pretrained(spec.source, **common).to(device).eval()
    if spec.kind == "unet":  # a bare UNet: the weak model of AutoGuidance
        return UNet2DConditionModel.from_pretrained(spec.source, **common).to(device).eval()
    if spec.kind == "classifier":
        from .classifier import NoiseAwareClassifier  # the lab's own model class

        return NoiseAwareClassifier.from_pretrained(spec.source, **common).to(device).eval()
    extra = dict(safety_checker=None, requires_safety_checker=False) if spec.kind == "text" else {}
    extra.update(_absent_parts(spec))
    pipe = DiffusionPipeline.from_pretrained(spec.source, **common, **extra)
    if offload:
        pipe.enable_model_cpu_offload(device=device)  # each part moves to the GPU for its own forward pass
    else:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "vae", None) is not None:
        tile_vae_above(pipe.vae)
    return pipe


def _absent_parts(spec: ModelSpec) -> dict[str, None]:
    """Optional parts a local folder lists as absent ([null, null] in model_index.json, as an SD3 folder without T5
    does), passed to from_pretrained as None: the pinned diffusers will not load such a folder otherwise."""
    index = Path(spec.source) / "model_index.json"
    if not index.is_file():
        return {}
    try:
        entries = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}
    return {name: None for name, value in entries.items()
            if not name.startswith("_") and value in ([None, None], None)}


class ModelStore:
    """Loads each model once; concurrent first requests for one model wait for a single load."""

    def __init__(self, device: torch.device | None = None, dtype: torch.dtype | None = None, *,
                 offload: bool | None = None, resident_controlnets: int = RESIDENT_CONTROLNETS):
        """dtype None: per family (pick_dtype); offload None: automatic (wants_offload)."""
        self.device = device or pick_device()
        self.fixed_dtype = dtype
        self.dtype = dtype or pick_dtype(self.device)  # the default; SD3 gets bfloat16 on CUDA unless dtype is fixed
        self.offload = wants_offload(self.device, offload)
        self.resident_controlnets = resident_controlnets
        self._cache: dict[tuple, Loaded] = {}
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self._resident: OrderedDict[tuple, None] = OrderedDict()  # ControlNets on the GPU, least recent first
        self.loads = 0  # how many loads actually ran; the tests hold the cache to it
        self.cpu = CpuPath() if self.device.type == "cpu" else None  # the CPU speed work (engine/cpu/)

    def dtype_for(self, spec: ModelSpec) -> torch.dtype:
        return self.fixed_dtype or pick_dtype(self.device, spec_family(spec))

    def get(self, spec: ModelSpec) -> Loaded:
        key = (spec.source, spec.kind, str(self.device), self.fixed_dtype)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._cache:
                obj = self._load_or_explain(spec)
                self._cache[key] = Loaded(spec, self.cpu.install(obj) if self.cpu is not None else obj)
                self.loads += 1
            loaded = self._cache[key]
        if spec.kind == "controlnet" and self.device.type == "cuda":
            self._make_resident(key, loaded.obj)
        return loaded

    def _make_resident(self, key: tuple, controlnet: torch.nn.Module) -> None:
        """Put this ControlNet on the GPU and, past `resident_controlnets`, move the least recently used one to the
        CPU (kept in the cache: asking for it again moves it back without reading the disk)."""
        with self._guard:
            self._resident.pop(key, None)
            self._resident[key] = None
            evicted = []
            while len(self._resident) > max(1, self.resident_controlnets):
                old, _ = self._resident.popitem(last=False)
                evicted.append(self._cache[old].obj)
        for model in evicted:
            model.to("cpu")
        if controlnet.device.type != self.device.type:
            controlnet.to(self.device)
        if evicted:
            torch.cuda.empty_cache()

    def clear(self) -> None:
        """Forget every loaded model; its memory is freed once nothing else holds it (the GPU bench, between
        architectures)."""
        with self._guard:
            self._cache.clear()
            self._locks.clear()
            self._resident.clear()

    def resident(self) -> list[str]:
        """Sources of the ControlNets now on the GPU, least recently used first."""
        with self._guard:
            return [key[0] for key in self._resident]

    def _load_or_explain(self, spec: ModelSpec) -> Any:
        try:
            return _load(spec, self.device, self.dtype_for(spec), self.offload)
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
