"""The training loop of every recipe, after k-diffusion's train.py and diffusers' train_text_to_image.py: warm-up and
cosine learning rate, gradient clipping, an EMA of the weights, resumable checkpoints and progress. A recipe supplies
its modules, optimizer, batches and loss, and exports the averaged weights the loop leaves in its modules."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint


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


@dataclass(frozen=True)
class Schedule:
    """How long and how fast a run trains: steps of `batch_size` samples, the peak learning rate and its warm-up."""

    steps: int  # total, counting the steps of a run being resumed
    batch_size: int
    lr: float  # of every parameter group
    warmup: int


@dataclass(frozen=True)
class Loop:
    """How a recipe's run is optimised, averaged, kept and reported."""

    name: str  # in progress lines
    schedule: Schedule
    run: Path  # checkpoint folder: a checkpoint found there is resumed
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step)), so the average soon forgets the init
    clip: float | None = 1.0  # gradient norm limit
    log_every: int = 50
    save_every: int = 250


def train(loop: Loop, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
          batches: Callable[[int], Iterator], loss: Callable[[object], torch.Tensor],
          on_save: Callable[[int, dict[str, EMA]], None] | None = None) -> list[float]:
    """Train (or resume) `modules` on `loss(batch)` for each batch of `batches(start_step)`, then load their EMA
    weights into them; returns the loss of every step run. `on_save(step, emas)` runs after each checkpoint."""
    emas = {name: EMA(module, loop.ema_decay) for name, module in modules.items()}
    start = load_checkpoint(loop.run, modules, optimizer, emas)
    data = batches(start)
    steps, lr, warmup = loop.schedule.steps, loop.schedule.lr, loop.schedule.warmup
    progress = Progress(loop.name, steps, start, loop.log_every)
    losses = []
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        losses.append(update(loop, loss(next(data)), optimizer, modules, emas, step))
        progress(step, losses)
        if (step + 1) % loop.save_every == 0 or step + 1 == steps:
            save_checkpoint(loop.run, step + 1, modules, optimizer, emas)
            if on_save is not None:
                on_save(step + 1, emas)
    progress.close()
    for name, module in modules.items():
        emas[name].copy_to(module)
    return losses


def update(loop: Loop, loss: torch.Tensor, optimizer: torch.optim.Optimizer, modules: dict[str, torch.nn.Module],
           emas: dict[str, EMA], step: int) -> float:
    """One step: backward, clip the gradient norm, step the optimizer, then the EMA."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if loop.clip is not None:
        torch.nn.utils.clip_grad_norm_([p for m in modules.values() for p in m.parameters()], loop.clip)
    optimizer.step()
    for name, module in modules.items():
        if loop.ema_warmup:
            emas[name].decay = min(loop.ema_decay, (1 + step) / (10 + step))
        emas[name].update(module)
    return loss.item()


class Progress:
    """A bar on a terminal, and every `every` steps a line with the mean loss, the rate and the time left, flushed
    so that a background run's log can be followed."""

    def __init__(self, name: str, total: int, start: int, every: int):
        self.name, self.total, self.start, self.every, self.t0 = name, total, start, every, time.time()
        self.bar = tqdm(total=total, initial=start, desc=name, disable=None, leave=False)  # off when not a terminal

    def __call__(self, step: int, losses: list[float]) -> None:
        self.bar.update(1)
        if (step + 1) % self.every:
            return
        loss = float(np.mean(losses[-self.every:]))
        self.bar.set_postfix(loss=f"{loss:.4f}")
        rate = (step + 1 - self.start) / max(1e-9, time.time() - self.t0)
        eta = (self.total - step - 1) / max(rate, 1e-9)
        tqdm.write(f"[{self.name}] step {step + 1}/{self.total} loss {loss:.4f} ({rate:.2f} it/s, eta "
                   f"{eta / 60:.1f} min)", file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        self.bar.close()
