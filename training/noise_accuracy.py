"""How well a noise-aware classifier names the shape at each noise level, on freshly rendered held-out scenes: the
table the classifier recipe prints after training and the class evaluation reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler

from engine.models.classifier import NoiseAwareClassifier
from world import SHAPES, render, sample_scene

from .common import to_tensor
from .diffusion import SCHEDULE, noised

NOISE_LEVELS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
EVAL_SEED = 91_000_000  # far from the pool's seed, so the held-out scenes are new ones


@torch.no_grad()
def held_out_latents(vae_folder: Path, n: int, seed: int = EVAL_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """n freshly rendered single-object scenes, any combination, encoded: scaled latents (n, 4, h, w) and shape
    ids (n,)."""
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
