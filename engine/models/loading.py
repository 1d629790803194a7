"""Load each model once per (source, device, dtype), thread-safely, through diffusers' from_pretrained, and keep
the loaded ones within a memory budget: past it, the least recently used model is dropped from the store, never a
default model (`keep`) nor one a running request holds.

On CUDA: half precision (bf16 for SD3, whose makers run it so), diffusers' own SDPA attention, the VAE decoding in
tiles above 1024 px, model CPU offload on GPUs under 16 GB (or when asked), and a bounded number of ControlNets
resident on the GPU, the least recently used moved to the CPU when another is asked for (as hysts' ControlNet Space
swaps its ControlNet beside a resident base pipeline).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import threading
import weakref
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
# The loaded models' budget, as a share of the memory there is at start: RAM the system reports available
# (/proc/meminfo MemAvailable) on a CPU, the device's memory on a GPU; the rest is for sampling itself.
# LAB_MODEL_MEMORY overrides it: a share such as 0.3, or a size such as 800M or 6G.
BUDGET_SHARE = {"cpu": 0.5, "cuda": 0.7}


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


def available_ram_bytes() -> int | None:
    """MemAvailable from /proc/meminfo: the RAM the system can give without swapping, or None where unreadable."""
    try:
        with open("/proc/meminfo") as meminfo:
            line = next(line for line in meminfo if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def memory_budget(device: torch.device, setting: str | None = None) -> int | None:
    """Bytes the loaded models may take: `setting` (LAB_MODEL_MEMORY where None) as a share of the memory there is
    (BUDGET_SHARE when empty) or as a size with K, M, G or T; None (no budget) where that memory cannot be read."""
    setting = (os.environ.get("LAB_MODEL_MEMORY", "") if setting is None else setting).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])i?b?)?", setting, re.IGNORECASE)
    if setting and match is None:
        raise EngineError(f"LAB_MODEL_MEMORY must be a share such as 0.5 or a size such as 6G, not '{setting}'.")
    if match and match.group(2):
        return int(float(match.group(1)) * 1024 ** (" kmgt".index(match.group(2).lower())))
    share = float(match.group(1)) if match else BUDGET_SHARE.get(device.type, BUDGET_SHARE["cpu"])
    if share > 1:  # a plain number of bytes
        return int(share)
    total = (cuda_memory_bytes() if device.type == "cuda" else None) or available_ram_bytes()
    return None if total is None else int(total * share)


def model_bytes(obj: Any) -> int:
    """Bytes of a loaded model's weights and buffers: every torch module of a pipeline, or the module itself
    (a tensor shared between modules counted once)."""
    if isinstance(obj, torch.nn.Module):
        modules = [obj]
    else:
        modules = [m for m in (getattr(obj, "components", None) or {}).values() if isinstance(m, torch.nn.Module)]
    seen, total = set(), 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


def weights_on_disk(spec: ModelSpec) -> int:
    """Bytes of a local folder's safetensors weights (what loading it is about to take), else 0."""
    if not spec.is_local:
        return 0
    try:
        return sum(path.stat().st_size for path in Path(spec.source).rglob("*.safetensors"))
    except OSError:
        return 0


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
    nbytes: int = 0  # its weights and buffers (model_bytes)


def native_size(spec: ModelSpec, obj: Any = None) -> tuple[int, int] | None:
    """(width, height) a text model generates at, known without loading it: from the loaded pipeline `obj` where
    given, else the registry's size, else a local folder's denoiser and VAE configs; None where none says."""
    if obj is not None:
        denoiser = getattr(obj, "unet", None) or getattr(obj, "transformer", None)
        vae = getattr(obj, "vae", None)
        configs = (getattr(denoiser, "config", None), getattr(vae, "config", None))
    elif spec.size:
        return spec.size, spec.size
    elif spec.is_local:
        folder = Path(spec.source)
        part = next((p for p in ("unet", "transformer") if (folder / p / "config.json").is_file()), "unet")
        configs = (_read_json(folder / part / "config.json"), _read_json(folder / "vae" / "config.json"))
    else:
        return None
    try:
        side = configs[0]["sample_size"] * 2 ** (len(configs[1]["block_out_channels"]) - 1)
    except (KeyError, TypeError):
        return None
    return (side, side) if isinstance(side, int) else None


def class_names(spec: ModelSpec, obj: Any = None) -> list[str]:
    """A class model's class names in id order, known without loading it: the loaded pipeline's labels where `obj`
    is given, else the id2label of its model_index.json (a local folder's, or the hub cache's; never fetched)."""
    if obj is not None:
        labels = getattr(obj, "labels", None) or {}
    else:
        if spec.is_local:
            index = _read_json(Path(spec.source) / "model_index.json")
        else:
            try:
                index = DiffusionPipeline.load_config(spec.source, local_files_only=True)
            except Exception:  # not in the hub cache, or no such id: nothing known yet
                index = None
        id2label = index.get("id2label") if isinstance(index, dict) else None
        labels = {}
        for key, value in (id2label.items() if isinstance(id2label, dict) else ()):  # as DiTPipeline reads it
            for label in str(value).split(","):
                if str(key).isdigit():
                    labels[label.strip()] = int(key)
    return [name for name, _ in sorted(labels.items(), key=lambda kv: (kv[1], kv[0]))]


def _gone() -> None:
    """The weak reference of an object that has none: reads as already collected."""
    return None


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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
    entries = _read_json(Path(spec.source) / "model_index.json") or {}
    return {name: None for name, value in entries.items()
            if not name.startswith("_") and value in ([None, None], None)}


class ModelStore:
    """Loads each model once; concurrent first requests for one model wait for a single load. The loaded models
    stay within `budget` bytes (memory_budget: a share of the memory there is at start): before and after each load,
    the least recently used ones are dropped, except the kept ones (`keep`: the default models) and those a running
    request still holds; what a dropped model took is freed once nothing holds it."""

    def __init__(self, device: torch.device | None = None, dtype: torch.dtype | None = None, *,
                 offload: bool | None = None, resident_controlnets: int = RESIDENT_CONTROLNETS,
                 budget: int | None = None):
        """dtype None: per family (pick_dtype); offload None: automatic (wants_offload); budget None: as
        LAB_MODEL_MEMORY says, else BUDGET_SHARE of the memory there is now."""
        self.device = device or pick_device()
        self.fixed_dtype = dtype
        self.dtype = dtype or pick_dtype(self.device)  # the default; SD3 gets bfloat16 on CUDA unless dtype is fixed
        self.offload = wants_offload(self.device, offload)
        self.resident_controlnets = resident_controlnets
        self.budget = memory_budget(self.device) if budget is None else budget
        self._cache: OrderedDict[tuple, Loaded] = OrderedDict()  # least recently used first
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self._resident: OrderedDict[tuple, None] = OrderedDict()  # ControlNets on the GPU, least recent first
        self._kept: set[tuple] = set()  # (source, kind) of the models never dropped
        self._dropping: dict[tuple, tuple] = {}  # models being dropped: spec, size, weak reference
        self.loads = 0  # how many loads actually ran; the tests hold the cache to it
        self.evictions = 0  # how many loaded models were dropped to stay within the budget
        self.cpu = CpuPath() if self.device.type == "cpu" else None  # the CPU speed work (engine/cpu/)

    def dtype_for(self, spec: ModelSpec) -> torch.dtype:
        return self.fixed_dtype or pick_dtype(self.device, spec_family(spec))

    def _key(self, spec: ModelSpec) -> tuple:
        return spec.source, spec.kind, str(self.device), self.fixed_dtype

    def keep(self, specs) -> None:
        """Never drop these models (the tabs' defaults), whatever the budget."""
        with self._guard:
            self._kept.update(self._key(spec)[:2] for spec in specs)

    def get(self, spec: ModelSpec) -> Loaded:
        key = self._key(spec)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            loaded = self._cached(key)
            if loaded is None:
                self._make_room(weights_on_disk(spec), key)
                obj = self._load_or_explain(spec)
                obj = self.cpu.install(obj) if self.cpu is not None else obj
                loaded = Loaded(spec, obj, model_bytes(obj))
                with self._guard:
                    self._cache[key] = loaded
                self.loads += 1
                self._make_room(0, key)
        if spec.kind == "controlnet" and self.device.type == "cuda":
            self._make_resident(key, loaded.obj)
        return loaded

    def peek(self, spec: ModelSpec) -> Any:
        """The model for `spec` if it is loaded, else None; never loads, and leaves the order of use as it is."""
        with self._guard:
            loaded = self._cache.get(self._key(spec))
        return None if loaded is None else loaded.obj

    def native_size(self, spec: ModelSpec) -> tuple[int, int] | None:
        """(width, height) a text model generates at, without loading it (native_size)."""
        return native_size(spec, self.peek(spec))

    def class_names(self, spec: ModelSpec) -> list[str]:
        """A class model's class names in id order, without loading it (class_names)."""
        return class_names(spec, self.peek(spec))

    def loaded_bytes(self) -> int:
        """Bytes the loaded models take (their weights and buffers)."""
        with self._guard:
            return sum(loaded.nbytes for loaded in self._cache.values())

    def loaded_sources(self) -> list[str]:
        """Sources of the loaded models, least recently used first."""
        with self._guard:
            return [key[0] for key in self._cache]

    def _cached(self, key: tuple) -> Loaded | None:
        """The loaded model of `key`, now the most recently used; one being dropped that is still held comes back."""
        with self._guard:
            loaded = self._cache.get(key)
            if loaded is None and key in self._dropping:
                spec, nbytes, ref = self._dropping[key]
                obj = ref()
                loaded = None if obj is None else self._cache.setdefault(key, Loaded(spec, obj, nbytes))
            if loaded is not None:
                self._cache.move_to_end(key)
        return loaded

    def _make_room(self, incoming: int, new: tuple) -> None:
        """Drop the least recently used models until those loaded plus `incoming` bytes fit the budget, never `new`,
        a kept one, nor one something else still holds (a running request: it goes back, as in use now). A dropped
        model leaves once nothing references it; the collector runs for those held only in reference cycles."""
        if self.budget is None:
            return
        spared = {new}
        while victims := self._victims(incoming, spared):
            self._drop(victims)
            gc.collect()
            spared |= self._settle(victims)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _victims(self, incoming: int, spared: set[tuple]) -> list[tuple]:
        """Keys of the least recently used models, neither spared nor kept, whose dropping would bring the store
        within the budget (as many as there are where that is not enough)."""
        with self._guard:
            excess = sum(loaded.nbytes for loaded in self._cache.values()) + incoming - self.budget
            victims = []
            for key, loaded in self._cache.items():
                if excess <= 0:
                    break
                if key not in spared and key[:2] not in self._kept:
                    victims.append(key)
                    excess -= loaded.nbytes
            return victims

    def _drop(self, keys: list[tuple]) -> None:
        """Take `keys` out of the store, keeping only a weak reference to each model until _settle."""
        with self._guard:
            for key in keys:
                loaded = self._cache.pop(key, None)
                if loaded is None:
                    continue
                try:
                    ref = weakref.ref(loaded.obj)
                except TypeError:  # no weak references to it: nothing can tell whether it is held
                    ref = _gone
                self._dropping[key] = (loaded.spec, loaded.nbytes, ref)

    def _settle(self, keys: list[tuple]) -> set[tuple]:
        """After a collection: the dropped models that are gone count as evicted; those still held go back into the
        store as the most recently used. Returns the keys of those held."""
        held = set()
        with self._guard:
            for key in keys:
                spec, nbytes, ref = self._dropping.pop(key, (None, 0, _gone))
                obj = ref()
                if obj is not None:
                    self._cache[key] = Loaded(spec, obj, nbytes)
                    held.add(key)
                elif key not in self._cache:  # not asked for again meanwhile
                    self._resident.pop(key, None)
                    self.evictions += 1
        return held

    def _make_resident(self, key: tuple, controlnet: torch.nn.Module) -> None:
        """Put this ControlNet on the GPU and, past `resident_controlnets`, move the least recently used one to the
        CPU (kept in the cache: asking for it again moves it back without reading the disk)."""
        with self._guard:
            self._resident.pop(key, None)
            self._resident[key] = None
            evicted = []
            while len(self._resident) > max(1, self.resident_controlnets):
                old, _ = self._resident.popitem(last=False)
                if old in self._cache:
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
