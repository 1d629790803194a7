"""Recipe: the class-conditional DiT (Peebles and Xie, 2023) over the world's shapes, on pool latents of
single-object scenes; the label is dropped to the null class 10% of the time so one network learns c and u
(Ho and Salimans). `python -m training.dit --steps 6000`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiTPipeline, DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from torch import nn

from engine.registry import write_id2label
from world import SHAPES

from . import pool as latent_pool
from .classifier import shape_labels
from .common import EMA, MODELS, RUNS, Log, cosine_lr, device, load_checkpoint, optimise, save_checkpoint
from .text2img import SCHEDULE, min_snr_weights, start_stage

P_UNCOND = 0.1
NULL_ID = len(SHAPES)  # LabelEmbedding's extra row: the id DiTTransformer2DModel reserves for "no class"
DIT = dict(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=6, num_attention_heads=4,
           attention_head_dim=32, num_embeds_ada_norm=len(SHAPES), norm_type="ada_norm_zero",
           norm_elementwise_affine=False, activation_fn="gelu-approximate")


CLASS_STD = 1.0


def adaln_zero_init(transformer: DiTTransformer2DModel, class_std: float = CLASS_STD) -> None:
    """DiT's initialisation (Peebles and Xie, 2023): xavier linears, adaLN modulations and output zeroed, so every
    block starts as the identity; diffusers' DiTTransformer2DModel does not do this itself. One change: the class
    embeddings are drawn at `class_std`, not the paper's 0.02. They are added to a timestep embedding whose norm
    grows to 15-30; at 0.02 (norm 0.2) the class is a faint part of every block's modulation, and 2400 steps left
    it at norm 0.35: the model barely used the class (eps error with the true, a wrong or the null class within
    1%). Drawn at unit scale the classes start as distinct as the timesteps."""
    for module in transformer.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    weight = transformer.pos_embed.proj.weight
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    nn.init.zeros_(transformer.pos_embed.proj.bias)
    for block in transformer.transformer_blocks:
        emb = block.norm1.emb
        nn.init.normal_(emb.class_embedder.embedding_table.weight, std=class_std)
        nn.init.normal_(emb.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(emb.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.zeros_(block.norm1.linear.weight)  # shift, scale and gate of attention and MLP
        nn.init.zeros_(block.norm1.linear.bias)
    for layer in (transformer.proj_out_1, transformer.proj_out_2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def build_transformer(dev: torch.device, class_std: float = CLASS_STD, **overrides) -> DiTTransformer2DModel:
    """The DiT (DIT, with `overrides`) with its paper's initialisation and diffusers' own label dropout off: the
    recipe drops labels itself, seeded and once per sample."""
    transformer = DiTTransformer2DModel(**{**DIT, **overrides})
    adaln_zero_init(transformer, class_std)
    transformer = transformer.to(dev)
    # Every block owns a LabelEmbedding that, in train mode, drops labels with its own unseeded torch.rand; the
    # null row (num_classes) stays in the table, only the dropping stops.
    for module in transformer.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0
    return transformer


def drop_labels(labels: torch.Tensor, gen: torch.Generator, p: float = P_UNCOND) -> torch.Tensor:
    """Replace each label by the null id with probability p, drawn from `gen`."""
    drop = torch.rand(labels.shape, generator=gen) < p  # (B,)
    return torch.where(drop.to(labels.device), torch.full_like(labels, NULL_ID), labels)


def train(steps: int, pool: Path = latent_pool.POOL, vae_folder: Path = RUNS / "vae-final", batch_size: int = 64,
          lr: float = 1e-3, run: Path | None = None, out: Path | None = None, warmup: int = 200,
          pool_size: int = 30_000, init: Path | None = None, **arch) -> list[float]:
    """Train (or resume) the DiT with min-SNR-weighted eps MSE, export the EMA weights as a DiTPipeline; returns
    the loss of every step run. `arch` overrides DIT (num_layers, num_attention_heads, patch_size). `init` starts a
    new stage, with its own warmup and cosine, from another run's EMA weights (the architecture must match)."""
    torch.manual_seed(0)
    dev = device()
    vae = AutoencoderKL.from_pretrained(vae_folder).eval().requires_grad_(False)
    data = latent_pool.ensure(pool, pool_size, vae_folder)
    if abs(data.scaling - vae.config.scaling_factor) > 1e-6:
        raise ValueError(f"The pool at {pool} was encoded by another VAE than {vae_folder}; rebuild one of them.")
    index, labels = shape_labels(data)
    transformer = build_transformer(dev, **arch)
    schedule = DDPMScheduler(**SCHEDULE)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.0)
    run = run or RUNS / "dit"
    start_stage(init, run, {"transformer": transformer})
    emas = {"transformer": EMA(transformer, 0.999)}
    start = load_checkpoint(run, {"transformer": transformer}, optimizer, emas)
    log = Log("dit", steps, start)
    gen = torch.Generator().manual_seed(start)
    rng = np.random.default_rng(start)
    losses = []
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        pick = rng.integers(len(index), size=batch_size)
        latents = data.latents(torch.from_numpy(index[pick]), gen).to(dev)  # (B, 4, 16, 16)
        y = drop_labels(torch.from_numpy(labels[pick]), gen).to(dev)  # (B,)
        noise = torch.randn(latents.shape, generator=gen).to(dev)  # (B, 4, 16, 16)
        t = torch.randint(0, schedule.config.num_train_timesteps, (batch_size,), generator=gen).to(dev)  # (B,)
        pred = transformer(schedule.add_noise(latents, noise, t), timestep=t, class_labels=y).sample  # (B, 4, 16, 16)
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * min_snr_weights(schedule, t)).mean()
        losses.append(optimise(loss, optimizer, {"transformer": transformer}, emas, step))
        if (step + 1) % 50 == 0:
            log(step, loss=float(np.mean(losses[-50:])))
        if (step + 1) % 250 == 0 or step + 1 == steps:
            save_checkpoint(run, step + 1, {"transformer": transformer}, optimizer, emas)
    export(vae, transformer, emas, out or MODELS / "lab-dit")
    return losses


def export(vae: AutoencoderKL, transformer: DiTTransformer2DModel, emas: dict, folder: Path) -> None:
    """Write the EMA weights as a DiTPipeline folder (safetensors) whose labels are the shape names."""
    emas["transformer"].copy_to(transformer)
    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    DiTPipeline(transformer=transformer.eval(), vae=vae, scheduler=scheduler).save_pretrained(
        folder, safe_serialization=True)
    write_id2label(folder, list(SHAPES))
    print(f"saved {folder}", flush=True)


def export_from_checkpoint(vae_folder: Path, run: Path, out: Path, **arch) -> int:
    """Export the latest checkpoint's EMA weights without training further; returns its step."""
    vae = AutoencoderKL.from_pretrained(vae_folder).eval()
    transformer = build_transformer(torch.device("cpu"), **arch)
    emas = {"transformer": EMA(transformer, 0.999)}
    step = load_checkpoint(run, {"transformer": transformer}, torch.optim.AdamW(transformer.parameters()), emas)
    if step == 0:
        raise FileNotFoundError(f"No checkpoint in {run}.")
    export(vae, transformer, emas, out)
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--layers", type=int, default=DIT["num_layers"],
                        help="blocks; more than the --init run has appends blocks that start as the identity")
    parser.add_argument("--heads", type=int, default=DIT["num_attention_heads"], help="heads of 32 channels")
    parser.add_argument("--patch-size", type=int, default=DIT["patch_size"])
    parser.add_argument("--class-std", type=float, default=CLASS_STD, help="scale the class embeddings start at")
    parser.add_argument("--pool", type=Path, default=latent_pool.POOL)
    parser.add_argument("--vae", type=Path, default=RUNS / "vae-final", help="the VAE the pool was encoded with")
    parser.add_argument("--run", type=Path, default=RUNS / "dit", help="checkpoint folder (resumes)")
    parser.add_argument("--out", type=Path, default=MODELS / "lab-dit", help="export folder")
    parser.add_argument("--init", type=Path, help="start a new stage from this run's EMA weights")
    parser.add_argument("--export-only", action="store_true", help="export the latest checkpoint and stop")
    args = parser.parse_args(argv)
    started = time.time()
    arch = dict(num_layers=args.layers, num_attention_heads=args.heads, patch_size=args.patch_size,
                class_std=args.class_std)
    if args.export_only:
        export_from_checkpoint(args.vae, args.run, args.out, **arch)
        return
    train(args.steps, args.pool, args.vae, args.batch_size, args.lr, args.run, args.out, args.warmup,
          init=args.init, **arch)
    print(json.dumps({"seconds": round(time.time() - started)}), flush=True)


if __name__ == "__main__":
    main()
