"""Recipe: the class-conditional DiT (Peebles and Xie, 2023) over the world's shapes, on pool latents of
single-object scenes; the label is dropped to the null class 10% of the time so one network learns c and u
(Ho and Salimans). `python -m training.dit --steps 6000`."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiTPipeline, DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from torch import nn

from engine.models.registry import write_id2label
from world import SHAPES

from . import latents
from .checkpoint import load_averaged, start_stage
from .common import MODELS, RUNS, add_schedule_arguments, config_from, device
from .diffusion import SCHEDULE, weighted_eps_loss
from .loop import Loop, Schedule, train as train_loop

P_UNCOND = 0.1
NULL_ID = len(SHAPES)  # LabelEmbedding's extra row: the id DiTTransformer2DModel reserves for "no class"
DIT = dict(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=6, num_attention_heads=4,
           attention_head_dim=32, num_embeds_ada_norm=len(SHAPES), norm_type="ada_norm_zero",
           norm_elementwise_affine=False, activation_fn="gelu-approximate")
CLASS_STD = 1.0


@dataclass(frozen=True, kw_only=True)
class DitConfig(latents.PoolRecipeConfig):
    schedule: Schedule = Schedule(steps=6000, batch_size=64, lr=1e-3, warmup=200)
    run: Path = RUNS / "dit"  # checkpoint folder (resumes)
    out: Path = MODELS / "lab-dit"  # export folder
    layers: int = DIT["num_layers"]  # more than the init has appends blocks that start as the identity
    heads: int = DIT["num_attention_heads"]  # of 32 channels each
    patch_size: int = DIT["patch_size"]
    class_std: float = CLASS_STD  # scale the class embeddings start at

    def transformer(self, dev: torch.device) -> DiTTransformer2DModel:
        return build_transformer(dev, self.class_std, num_layers=self.layers, num_attention_heads=self.heads,
                                 patch_size=self.patch_size)


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


def batches(pool: latents.Pool, batch_size: int, start: int):
    """From step `start` on: latents of single-object scenes, their shape ids (dropped to the null id at P_UNCOND),
    noise and timesteps."""
    dev = device()
    for x0, y, gen in latents.labelled_batches(pool, batch_size, start):
        y = drop_labels(y, gen).to(dev)  # (B,)
        noise = torch.randn(x0.shape, generator=gen).to(dev)  # (B, 4, 16, 16)
        t = torch.randint(0, SCHEDULE["num_train_timesteps"], (batch_size,), generator=gen).to(dev)  # (B,)
        yield x0.to(dev), y, noise, t


def train(config: DitConfig) -> list[float]:
    """Train (or resume) the DiT with min-SNR-weighted eps MSE, export the EMA weights as a DiTPipeline; returns
    the loss of every step run."""
    torch.manual_seed(0)
    vae = AutoencoderKL.from_pretrained(config.vae).eval().requires_grad_(False)
    pool = config.load()
    if abs(pool.scaling - vae.config.scaling_factor) > 1e-6:
        raise ValueError(f"The pool at {config.pool} was encoded by another VAE than {config.vae}; "
                         "rebuild one of them.")
    transformer = config.transformer(device())
    schedule = DDPMScheduler(**SCHEDULE)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.schedule.lr, weight_decay=0.0)
    start_stage(config.init, config.run, {"transformer": transformer})

    def loss(batch) -> torch.Tensor:
        x0, y, noise, t = batch
        pred = transformer(schedule.add_noise(x0, noise, t), timestep=t, class_labels=y).sample  # (B, 4, 16, 16)
        return weighted_eps_loss(pred, noise, schedule, t).mean()

    losses = train_loop(Loop("dit", config.schedule, config.run), {"transformer": transformer}, optimizer,
                        lambda start: batches(pool, config.schedule.batch_size, start), loss)
    export(vae, transformer, config.out)
    return losses


def export(vae: AutoencoderKL, transformer: DiTTransformer2DModel, folder: Path) -> None:
    """Write a DiTPipeline folder (safetensors) whose labels are the shape names."""
    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    DiTPipeline(transformer=transformer.eval(), vae=vae, scheduler=scheduler).save_pretrained(
        folder, safe_serialization=True)
    write_id2label(folder, list(SHAPES))
    print(f"saved {folder}", flush=True)


def export_from_checkpoint(config: DitConfig) -> int:
    """Export the run's latest EMA weights without training further; returns its step."""
    vae = AutoencoderKL.from_pretrained(config.vae).eval()
    transformer = config.transformer(torch.device("cpu"))
    step = load_averaged(config.run, {"transformer": transformer})
    export(vae, transformer, config.out)
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_schedule_arguments(parser, DitConfig.schedule)
    parser.add_argument("--layers", type=int, default=DitConfig.layers,
                        help="blocks; more than the --init run has appends blocks that start as the identity")
    parser.add_argument("--heads", type=int, default=DitConfig.heads, help="heads of 32 channels")
    parser.add_argument("--patch-size", type=int, default=DitConfig.patch_size)
    parser.add_argument("--class-std", type=float, default=DitConfig.class_std,
                        help="scale the class embeddings start at")
    latents.add_pool_arguments(parser)
    parser.add_argument("--run", type=Path, default=DitConfig.run, help="checkpoint folder (resumes)")
    parser.add_argument("--out", type=Path, default=DitConfig.out, help="export folder")
    parser.add_argument("--export-only", action="store_true", help="export the latest checkpoint and stop")
    args = parser.parse_args(argv)
    started = time.time()
    config = config_from(DitConfig, args)
    if args.export_only:
        export_from_checkpoint(config)
        return
    train(config)
    print(json.dumps({"seconds": round(time.time() - started)}), flush=True)


if __name__ == "__main__":
    main()
