"""A pool of rendered scenes encoded once by the VAE, shared by the latent-space recipes (text-to-image, DiT,
noise-aware classifier). Encoding costs more than a small UNet's training step on a CPU, so each recipe samples
from the pool's posterior (mean, std) instead of encoding every batch again. `python -m training.pool --n 30000`."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from world import ObjectSpec, Scene, render, sample_scene
from world.split import HELD_OUT

from .common import RUNS, device
from .vae import to_tensor

POOL = RUNS / "pool"
SEED = 7_000_000


class Pool:
    """Latent posteriors (N, 4, 16, 16) and the scenes they show; `sample` draws latents with the VAE's scaling."""

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
    save_file({"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}, str(folder / "latents.safetensors"))
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--vae", type=Path, default=RUNS / "vae-final")
    parser.add_argument("--out", type=Path, default=POOL)
    args = parser.parse_args(argv)
    build(args.n, args.vae, args.out)


if __name__ == "__main__":
    main()
