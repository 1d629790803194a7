"""Where runs and models live, the device, images as tensors, and recipe configs from command lines: what every
recipe needs besides the loop."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from .loop import Schedule

RUNS = Path(__file__).resolve().parent.parent / "runs"  # ignored by git: checkpoints live here
MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) to float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def add_schedule_arguments(parser: argparse.ArgumentParser, defaults: Schedule,
                           names=("steps", "batch_size", "lr", "warmup")) -> None:
    """`--steps`, `--batch-size`, `--lr`, `--warmup` (those in `names`), defaulting to a recipe's schedule."""
    for name in names:
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)


def config_from(cls, args: argparse.Namespace, **values):
    """A recipe's config from the parsed flags named as its fields or its schedule's, and `values`; the rest keep
    the config's defaults."""
    given = vars(args) | values
    schedule = replace(cls.schedule, **{f.name: given[f.name] for f in fields(Schedule) if f.name in given})
    return cls(schedule=schedule, **{f.name: given[f.name] for f in fields(cls) if f.name in given})
