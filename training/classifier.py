"""Recipe: the noise-aware shape classifier p(y | x_t, t) for classifier guidance (Dhariwal and Nichol, 2021), trained
on pool latents of single-object scenes noised at every timestep of lab-sd's schedule.
`python -m training.classifier --steps 4500`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler

from engine.classifier import NoiseAwareClassifier
from world import SHAPES, render, sample_scene

from . import pool as latent_pool
from .common import EMA, MODELS, RUNS, Log, cosine_lr, device, load_checkpoint, optimise, save_checkpoint
from .text2img import SCHEDULE, start_stage
from .vae import to_tensor

CONFIG = dict(block_out_channels=(64, 128, 256), time_embed_dim=128, norm_num_groups=8)  # as shipped
NOISE_LEVELS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
EVAL_SEED = 91_000_000  # far from the pool's seed, so the held-out scenes are new ones


def shape_labels(data: latent_pool.Pool) -> tuple[np.ndarray, np.ndarray]:
    """Pool indices of the single-object scenes and their shape ids in SHAPES order."""
    index = data.indices(n_objects=1)
    labels = np.array([SHAPES.index(data.scenes[i].objects[0].shape) for i in index])
    return index, labels


def noised(latents: torch.Tensor, t: torch.Tensor, gen: torch.Generator, schedule: DDPMScheduler) -> torch.Tensor:
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, with eps drawn from `gen`."""
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)  # (B, 4, h, w)
    return schedule.add_noise(latents, noise, t)


def build_classifier(dev: torch.device,
                     channels: tuple[int, ...] = CONFIG["block_out_channels"]) -> NoiseAwareClassifier:
    config = {**CONFIG, "block_out_channels": tuple(channels)}
    return NoiseAwareClassifier(class_names=list(SHAPES), **config).to(dev)


def train(steps: int, pool: Path = latent_pool.POOL, batch_size: int = 128, lr: float = 2e-3,
          run: Path | None = None, out: Path | None = None, warmup: int = 200, vae_folder: Path = RUNS / "vae-final",
          pool_size: int = 30_000, init: Path | None = None,
          channels: tuple[int, ...] = CONFIG["block_out_channels"]) -> list[float]:
    """Train (or resume) the classifier with cross-entropy at uniform timesteps, export the EMA weights; returns
    the loss of every step run. `init` starts a new stage, with its own warmup and cosine, from another run's EMA
    weights (the architecture must match); `channels` are the widths of its resolution levels."""
    torch.manual_seed(0)
    dev = device()
    data = latent_pool.ensure(pool, pool_size, vae_folder)
    index, labels = shape_labels(data)
    model = build_classifier(dev, channels)
    schedule = DDPMScheduler(**SCHEDULE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    emas = {"classifier": EMA(model, 0.999)}
    run = run or RUNS / "classifier"
    start_stage(init, run, {"classifier": model})
    start = load_checkpoint(run, {"classifier": model}, optimizer, emas)
    log = Log("classifier", steps, start)
    gen = torch.Generator().manual_seed(start)
    rng = np.random.default_rng(start)
    losses = []
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        pick = rng.integers(len(index), size=batch_size)
        latents = data.latents(torch.from_numpy(index[pick]), gen).to(dev)  # (B, 4, 16, 16)
        y = torch.from_numpy(labels[pick]).to(dev)  # (B,)
        t = torch.randint(0, schedule.config.num_train_timesteps, (batch_size,), generator=gen).to(dev)  # (B,)
        loss = F.cross_entropy(model(noised(latents, t, gen, schedule), t), y)
        losses.append(optimise(loss, optimizer, {"classifier": model}, emas, step))
        if (step + 1) % 100 == 0:
            log(step, loss=float(np.mean(losses[-100:])))
        if (step + 1) % 500 == 0 or step + 1 == steps:
            save_checkpoint(run, step + 1, {"classifier": model}, optimizer, emas)
    export(model, emas, out or MODELS / "lab-classifier")
    return losses


def export(model: NoiseAwareClassifier, emas: dict, folder: Path) -> None:
    """Write the EMA weights as config.json plus safetensors."""
    emas["classifier"].copy_to(model)
    model.eval().save_pretrained(folder, safe_serialization=True)
    print(f"saved {folder}", flush=True)


@torch.no_grad()
def held_out_latents(vae_folder: Path, n: int, seed: int = EVAL_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """n freshly rendered single-object scenes, any combination, encoded: scaled latents (n, 4, h, w), shape ids (n,)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, n_objects=1) for _ in range(n)]
    images = np.stack([render(scene, rng).image for scene in scenes])  # (n, 64, 64, 3)
    vae = AutoencoderKL.from_pretrained(vae_folder).eval()
    gen = torch.Generator().manual_seed(seed)
    latents = torch.cat([vae.encode(to_tensor(images[lo:lo + 256])).latent_dist.sample(gen)
                         for lo in range(0, n, 256)]) * vae.config.scaling_factor  # (n, 4, h, w)
    return latents, torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes])


@torch.no_grad()
def accuracy_by_noise(classifier: NoiseAwareClassifier, latents: torch.Tensor, labels: torch.Tensor,
                      levels=NOISE_LEVELS, seed: int = 0) -> dict[int, float]:
    """Top-1 accuracy of p(y | x_t, t) at each timestep in `levels`, same noise draws for every level."""
    schedule = DDPMScheduler(**SCHEDULE)
    dev, dtype = classifier.device, classifier.dtype
    accuracy = {}
    for level in levels:
        gen = torch.Generator().manual_seed(seed)
        t = torch.full((len(latents),), level)  # (n,)
        x_t = noised(latents, t, gen, schedule).to(dev, dtype)  # (n, 4, h, w)
        predicted = classifier(x_t, t.to(dev)).argmax(-1).cpu()  # (n,)
        accuracy[int(level)] = float((predicted == labels).float().mean())
    return accuracy


def print_accuracy(accuracy: dict[int, float]) -> None:
    print(f"classifier accuracy by timestep (chance = 1/{len(SHAPES)})")
    print(" ".join(f"{t:>5}" for t in accuracy))
    print(" ".join(f"{a:>5.2f}" for a in accuracy.values()), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--pool", type=Path, default=latent_pool.POOL)
    parser.add_argument("--vae", type=Path, default=RUNS / "vae-final", help="the VAE the pool was encoded with")
    parser.add_argument("--run", type=Path, default=RUNS / "classifier", help="checkpoint folder (resumes)")
    parser.add_argument("--out", type=Path, default=MODELS / "lab-classifier", help="export folder")
    parser.add_argument("--init", type=Path, help="start a new stage from this run's EMA weights")
    parser.add_argument("--channels", type=int, nargs="+", default=list(CONFIG["block_out_channels"]),
                        help="widths of the resolution levels (each level after the first halves the size)")
    parser.add_argument("--eval-n", type=int, default=600, help="held-out scenes for the accuracy table (0 = none)")
    args = parser.parse_args(argv)
    started = time.time()
    train(args.steps, args.pool, args.batch_size, args.lr, args.run, args.out, args.warmup, args.vae, init=args.init,
          channels=tuple(args.channels))
    if args.eval_n:
        classifier = NoiseAwareClassifier.from_pretrained(args.out, use_safetensors=True).to(device())
        print_accuracy(accuracy_by_noise(classifier, *held_out_latents(args.vae, args.eval_n)))
    print(json.dumps({"seconds": round(time.time() - started)}), flush=True)


if __name__ == "__main__":
    main()
