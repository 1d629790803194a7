"""Recipe: the noise-aware shape classifier p(y | x_t, t) for classifier guidance (Dhariwal and Nichol, 2021), trained
on pool latents of single-object scenes noised at every timestep of lab-sd's schedule.
`python -m training.classifier --steps 4500`."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from engine.models.classifier import NoiseAwareClassifier
from world import SHAPES

from . import latents
from .checkpoint import start_stage
from .common import MODELS, RUNS, add_schedule_arguments, config_from, device
from .diffusion import SCHEDULE, noised
from .loop import Loop, Schedule, train as train_loop
from .noise_accuracy import accuracy_by_noise, held_out_latents, print_accuracy

CONFIG = dict(block_out_channels=(64, 128, 256), time_embed_dim=128, norm_num_groups=8)  # as shipped


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig(latents.PoolRecipeConfig):
    schedule: Schedule = Schedule(steps=4500, batch_size=128, lr=2e-3, warmup=200)
    run: Path = RUNS / "classifier"  # checkpoint folder (resumes)
    out: Path = MODELS / "lab-classifier"  # export folder
    channels: tuple[int, ...] = CONFIG["block_out_channels"]  # widths of the resolution levels


def build_classifier(dev: torch.device,
                     channels: tuple[int, ...] = CONFIG["block_out_channels"]) -> NoiseAwareClassifier:
    config = {**CONFIG, "block_out_channels": tuple(channels)}
    return NoiseAwareClassifier(class_names=list(SHAPES), **config).to(dev)


def batches(pool: latents.Pool, schedule: DDPMScheduler, batch_size: int, start: int):
    """From step `start` on: latents of single-object scenes noised at uniform timesteps, the timesteps and the
    shape ids."""
    dev = device()
    for x0, y, gen in latents.labelled_batches(pool, batch_size, start):
        t = torch.randint(0, schedule.config.num_train_timesteps, (batch_size,), generator=gen).to(dev)  # (B,)
        yield noised(x0.to(dev), t, gen, schedule), t, y.to(dev)


def train(config: ClassifierConfig) -> list[float]:
    """Train (or resume) the classifier with cross-entropy at uniform timesteps, export the EMA weights; returns
    the loss of every step run."""
    torch.manual_seed(0)
    pool = config.load()
    model = build_classifier(device(), config.channels)
    schedule = DDPMScheduler(**SCHEDULE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.schedule.lr, weight_decay=0.01)
    start_stage(config.init, config.run, {"classifier": model})

    def loss(batch) -> torch.Tensor:
        x_t, t, y = batch
        return F.cross_entropy(model(x_t, t), y)

    loop = Loop("classifier", config.schedule, config.run, log_every=100, save_every=500)
    losses = train_loop(loop, {"classifier": model}, optimizer,
                        lambda start: batches(pool, schedule, config.schedule.batch_size, start), loss)
    export(model, config.out)
    return losses


def export(model: NoiseAwareClassifier, folder: Path) -> None:
    """Write the classifier as config.json plus safetensors."""
    model.eval().save_pretrained(folder, safe_serialization=True)
    print(f"saved {folder}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_schedule_arguments(parser, ClassifierConfig.schedule)
    latents.add_pool_arguments(parser)
    parser.add_argument("--run", type=Path, default=ClassifierConfig.run, help="checkpoint folder (resumes)")
    parser.add_argument("--out", type=Path, default=ClassifierConfig.out, help="export folder")
    parser.add_argument("--channels", type=int, nargs="+", default=list(ClassifierConfig.channels),
                        help="widths of the resolution levels (each level after the first halves the size)")
    parser.add_argument("--eval-n", type=int, default=600, help="held-out scenes for the accuracy table (0 = none)")
    args = parser.parse_args(argv)
    started = time.time()
    config = config_from(ClassifierConfig, args, channels=tuple(args.channels))
    train(config)
    if args.eval_n:
        classifier = NoiseAwareClassifier.from_pretrained(config.out, use_safetensors=True).to(device())
        print_accuracy(accuracy_by_noise(classifier, *held_out_latents(config.vae, args.eval_n)))
    print(json.dumps({"seconds": round(time.time() - started)}), flush=True)


if __name__ == "__main__":
    main()
