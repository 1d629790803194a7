"""Recipe: the AutoencoderKL that maps the world's 64x64x3 scenes to 16x16x4 latents (Rombach et al., 2022)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from diffusers import AutoencoderKL

from engine.world import render_batch

from .common import EMA, MODELS, RUNS, Log, cosine_lr, device, load_checkpoint, save_checkpoint

CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
              up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=(16, 32, 64), layers_per_block=1,
              latent_channels=4, norm_num_groups=8, sample_size=64)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) to float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def batch(step: int, size: int, crop: int | None, rng: np.random.Generator) -> torch.Tensor:
    images, _, _ = render_batch(1_000_000 + step * size, size, n_objects=(1, 2), paraphrase=False)
    x = to_tensor(images)
    if crop:
        i, j = rng.integers(0, 64 - crop + 1, size=2)
        x = x[:, :, i:i + crop, j:j + crop]
    return x


@torch.no_grad()
def psnr(vae: AutoencoderKL, n: int = 256, seed: int = 99_000_000) -> float:
    """Reconstruction PSNR in dB on fresh scenes, from the posterior mode."""
    images, _, _ = render_batch(seed, n, n_objects=(1, 2), exclude=frozenset(), paraphrase=False)
    x = to_tensor(images).to(vae.device)
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = (((rec + 1) / 2 - (x + 1) / 2) ** 2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1 / mse)).mean())


@torch.no_grad()
def scaling_factor(vae: AutoencoderKL, n: int = 512) -> float:
    """1 / std of the latents, so diffusion sees unit-variance latents (as Stable Diffusion's 0.18215 does)."""
    images, _, _ = render_batch(98_000_000, n, n_objects=(1, 2), paraphrase=False)
    z = vae.encode(to_tensor(images).to(vae.device)).latent_dist.sample()
    return float(1 / z.std())


def train(steps: int, batch_size: int = 32, lr: float = 2e-3, full_res_steps: int = 400, out=None, run=None,
          warmup: int = 200) -> tuple[AutoencoderKL, list[float]]:
    """Train (or resume) the VAE; returns the EMA model and the loss of every step run."""
    torch.manual_seed(0)
    dev = device()
    vae = AutoencoderKL(**CONFIG).to(dev)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(vae, 0.995)
    run = run or RUNS / "vae"
    losses = []
    start = load_checkpoint(run, {"vae": vae}, optimizer, {"vae": ema})
    rng = np.random.default_rng(start)
    log = Log("vae", steps, start)
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        crop = None if step >= steps - full_res_steps else 32  # crops are 4x cheaper; finish at full size
        x = batch(step, batch_size if crop else batch_size // 2, crop, rng).to(dev)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update(vae)
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log(step, loss=loss.item())
        if (step + 1) % 500 == 0 or step + 1 == steps:
            save_checkpoint(run, step + 1, {"vae": vae}, optimizer, {"vae": ema})
    ema.copy_to(vae)
    vae.eval()
    vae.register_to_config(scaling_factor=scaling_factor(vae))
    result = {"psnr_db": psnr(vae), "steps": steps, "scaling_factor": vae.config.scaling_factor}
    print(json.dumps(result), flush=True)
    folder = out or (RUNS / "vae-final")
    vae.save_pretrained(folder)
    (folder / "metrics.json").write_text(json.dumps(result, indent=2))
    return vae, losses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args(argv)
    train(args.steps)


if __name__ == "__main__":
    main()
