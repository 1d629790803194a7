"""Shared pieces of the recipes: device, seeding, schedules, EMA and resumable safetensors checkpoints."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RUNS = Path(__file__).resolve().parent.parent / "runs"  # ignored by git: checkpoints live here
MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cosine_lr(step: int, total: int, base: float, warmup: int = 200) -> float:
    """Linear warm-up, then cosine decay to 5% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class EMA:
    """Exponential moving average of a model's weights, the weights the recipes ship."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.float(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})


def optimise(loss: torch.Tensor, optimizer: torch.optim.Optimizer, modules: dict[str, torch.nn.Module],
             emas: dict[str, EMA], step: int, max_decay: float = 0.999) -> float:
    """One update of every recipe: backward, clip the gradient norm at 1, step, then the EMA with warm-up decay."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for m in modules.values() for p in m.parameters()], 1.0)
    optimizer.step()
    for name, module in modules.items():
        emas[name].decay = min(max_decay, (1 + step) / (10 + step))
        emas[name].update(module)
    return loss.item()


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
    tmp = folder / "checkpoint.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "checkpoint.safetensors")
    (folder / "checkpoint.json").write_text(json.dumps({"step": step, **opt_meta, "time": time.time()}))


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optimizer, ema: dict) -> int:
    """Resume from a checkpoint if there is one; returns the step to continue from."""
    path = folder / "checkpoint.safetensors"
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


class Log:
    """Progress lines with throughput, flushed so a background run can be followed."""

    def __init__(self, name: str, total: int, start: int):
        self.name, self.total, self.start, self.t0 = name, total, start, time.time()

    def __call__(self, step: int, **values) -> None:
        done = step + 1 - self.start
        rate = done / max(1e-9, time.time() - self.t0)
        eta = (self.total - step - 1) / max(rate, 1e-9)
        text = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        print(f"[{self.name}] step {step + 1}/{self.total} {text} ({rate:.2f} it/s, eta {eta / 60:.1f} min)",
              flush=True)
