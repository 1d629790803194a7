"""Run folders: resumable safetensors checkpoints (weights, EMA weights, optimizer moments; no pickles) and the start
of a new stage from another run's averaged weights."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT = "checkpoint.safetensors"


def _flat_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {f"opt.{i}.{name}": t.contiguous() for i, s in state["state"].items() for name, t in s.items()
               if torch.is_tensor(t)}
    return tensors, {"param_groups": state["param_groups"]}


def save_checkpoint(folder: Path, step: int, modules: dict[str, torch.nn.Module], optimizer, ema: dict) -> None:
    """Weights, EMA weights and optimizer moments as safetensors, the step in JSON: no pickles."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{k}": v.contiguous() for name, m in modules.items() for k, v in m.state_dict().items()}
    tensors.update({f"ema.{name}.{k}": v.contiguous() for name, e in ema.items() for k, v in e.shadow.items()})
    opt_tensors, opt_meta = _flat_optimizer(optimizer)
    tensors.update(opt_tensors)
    tmp = folder / f"{CHECKPOINT}.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / CHECKPOINT)
    (folder / "checkpoint.json").write_text(json.dumps({"step": step, **opt_meta, "time": time.time()}))


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optimizer, ema: dict) -> int:
    """Resume from a checkpoint if there is one; returns the step to continue from."""
    path = folder / CHECKPOINT
    if not path.is_file():
        return 0
    tensors = load_file(str(path))
    meta = json.loads((folder / "checkpoint.json").read_text())
    for name, m in modules.items():
        m.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    for name, e in ema.items():
        prefix = f"ema.{name}."
        e.shadow = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    state = {"state": {}, "param_groups": meta["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)
    return int(meta["step"])


def load_averaged(folder: Path, modules: dict[str, torch.nn.Module]) -> int:
    """Load a checkpoint's EMA weights (the weights a recipe ships) into `modules`; returns its step."""
    if not (folder / CHECKPOINT).is_file():
        raise FileNotFoundError(f"No checkpoint in {folder}.")
    tensors = load_file(str(folder / CHECKPOINT))
    for name, module in modules.items():
        prefix = f"ema.{name}."
        state = module.state_dict()
        module.load_state_dict({k[len(prefix):]: v.to(state[k[len(prefix):]].dtype) for k, v in tensors.items()
                                if k.startswith(prefix)})
    return int(json.loads((folder / "checkpoint.json").read_text())["step"])


def start_from(init: Path, modules: dict[str, torch.nn.Module]) -> list[str]:
    """Load `init`'s EMA weights into `modules`, the start of a fine-tune stage. Blocks the init lacks start as the
    identity, so the grown model first computes exactly what the init did: attention blocks of a UNet grown to
    `UNET_ATTN16` with their output projection zeroed, and DiT blocks appended to a deeper DiT (`--layers`) with
    their adaLN-zero modulation zeroed (gates 0: attention and MLP add nothing). Returns the names of those blocks;
    any other mismatch is an error."""
    tensors = load_file(str(init / CHECKPOINT))
    grown = []
    for name, module in modules.items():
        prefix = f"ema.{name}."
        missing, unexpected = module.load_state_dict(
            {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=False)
        pattern = r"(down|up)_blocks\.\d+\.attentions\.\d+|transformer_blocks\.\d+"
        new = sorted({m.group(0) for key in missing if (m := re.match(pattern, key))})
        stray = [key for key in missing if not any(key.startswith(block + ".") for block in new)]
        if unexpected or stray:
            raise ValueError(f"{init} does not fit this {name}: unexpected {unexpected[:3]}, missing {stray[:3]}.")
        for block in new:
            sub = module.get_submodule(block)
            zeroed = sub.proj_out if hasattr(sub, "proj_out") else sub.norm1.linear
            torch.nn.init.zeros_(zeroed.weight)
            torch.nn.init.zeros_(zeroed.bias)
        grown += [f"{name}.{block}" for block in new]
    return grown


def start_stage(init: Path | None, run: Path, modules: dict[str, torch.nn.Module]) -> None:
    """A new stage starts from `init`'s averaged weights (as shipped) unless `run` already has a checkpoint to
    resume; no `init` leaves the modules as built."""
    if init is None or (run / CHECKPOINT).is_file():
        return
    grown = start_from(init, modules)
    print(f"started from {init}" + (f", grew {', '.join(grown)}" if grown else ""), flush=True)
