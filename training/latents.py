"""A pool of rendered scenes encoded once by the VAE, shared by the latent-space recipes (text-to-image, DiT,
noise-aware classifier). Encoding costs more than a small UNet's training step on a CPU, so each recipe samples
from the pool's posterior (mean, std) instead of encoding every batch again. Here too: what those recipes' configs
share, and their labelled batches."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from world import SHAPES, ObjectSpec, Scene, render, sample_scene
from world.split import HELD_OUT

from .common import RUNS, device, to_tensor

POOL = RUNS / "pool"
SEED = 7_000_000


class Pool:
    """Latent posteriors (N, 4, 16, 16) and the scenes they show; `latents` draws latents with the VAE's scaling."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, scenes: list[Scene], scaling: float):
        self.mean, self.std, self.scenes, self.scaling = mean, std, scenes, scaling

    def __len__(self) -> int:
        return len(self.scenes)

    def latents(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        mean, std = self.mean[index].float(), self.std[index].float()
        return (mean + std * torch.randn(mean.shape, generator=gen)) * self.scaling

    def indices(self, *, n_objects: int | None = None) -> np.ndarray:
        return np.array([i for i, s in enumerate(self.scenes) if n_objects is None or len(s.objects) == n_objects])


def build(n: int, vae_folder: Path, folder: Path = POOL, batch_size: int = 256) -> None:
    """Render n scenes (a third with two objects, held-out combinations excluded) and encode them."""
    dev = device()
    vae = AutoencoderKL.from_pretrained(vae_folder).to(dev).eval()
    rng = np.random.default_rng(SEED)
    scenes, means, stds = [], [], []
    started = time.time()
    for lo in range(0, n, batch_size):
        images = []
        for _ in range(min(batch_size, n - lo)):
            scene = sample_scene(rng, n_objects=1 if rng.random() < 2 / 3 else 2, exclude=HELD_OUT)
            images.append(render(scene, rng).image)
            scenes.append(scene)
        with torch.inference_mode():
            dist = vae.encode(to_tensor(np.stack(images)).to(dev)).latent_dist
        means.append(dist.mean.half().cpu().contiguous())
        stds.append(dist.std.half().cpu().contiguous())
        print(f"[pool] {lo + len(images)}/{n} ({time.time() - started:.0f} s)", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()},
              str(folder / "latents.safetensors"))
    meta = {"vae": str(vae_folder), "scaling_factor": vae.config.scaling_factor,
            "scenes": [asdict(s) for s in scenes]}
    (folder / "scenes.json").write_text(json.dumps(meta))


def load(folder: Path = POOL) -> Pool:
    tensors = load_file(str(folder / "latents.safetensors"))
    meta = json.loads((folder / "scenes.json").read_text())
    scenes = [Scene(tuple(ObjectSpec(**o) for o in s["objects"]), s["background"]) for s in meta["scenes"]]
    return Pool(tensors["mean"], tensors["std"], scenes, meta["scaling_factor"])


def ensure(folder: Path, n: int, vae_folder: Path) -> Pool:
    """The pool in `folder`, built first (n scenes, encoded by `vae_folder`) if it is not there yet."""
    if not (folder / "latents.safetensors").is_file():
        build(n, vae_folder, folder)
    return load(folder)


@dataclass(frozen=True, kw_only=True)
class PoolRecipeConfig:
    """What the recipes trained on the pool share: the pool, built from `vae` with `pool_size` scenes if it is
    missing, and the run whose EMA weights a new stage starts from (None: a new model)."""

    pool: Path = POOL
    vae: Path = RUNS / "vae-final"
    pool_size: int = 30_000
    init: Path | None = None

    def load(self) -> Pool:
        return ensure(self.pool, self.pool_size, self.vae)


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    """`--pool`, `--vae` and `--init`, the flags of `PoolRecipeConfig`'s fields."""
    parser.add_argument("--pool", type=Path, default=PoolRecipeConfig.pool)
    parser.add_argument("--vae", type=Path, default=PoolRecipeConfig.vae, help="the VAE the pool was encoded with")
    parser.add_argument("--init", type=Path, help="start a new stage from this run's EMA weights")


def shape_labels(data: Pool) -> tuple[np.ndarray, np.ndarray]:
    """Pool indices of the single-object scenes and their shape ids in SHAPES order."""
    index = data.indices(n_objects=1)
    labels = np.array([SHAPES.index(data.scenes[i].objects[0].shape) for i in index])
    return index, labels


def labelled_batches(pool: Pool, batch_size: int, start: int):
    """From step `start` on: latents of single-object scenes (B, 4, 16, 16) and their shape ids (B,), with the
    generator they were drawn from, which the recipe draws its noise from next; all seeded by `start`."""
    index, labels = shape_labels(pool)
    gen = torch.Generator().manual_seed(start)
    rng = np.random.default_rng(start)
    while True:
        pick = rng.integers(len(index), size=batch_size)
        yield pool.latents(torch.from_numpy(index[pick]), gen), torch.from_numpy(labels[pick]), gen
