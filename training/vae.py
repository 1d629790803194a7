"""Recipe: the AutoencoderKL that maps the world's 64x64x3 scenes to 16x16x4 latents (Rombach et al., 2022), and the
fine-tune of its decoder alone. `python -m training.vae --steps 3000`."""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from world import SHAPES, render_batch
from world.detect import detect

from .common import RUNS, add_schedule_arguments, config_from, device, to_tensor
from .loop import Loop, Schedule, train as train_loop

CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
              up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=(16, 32, 64), layers_per_block=1,
              latent_channels=4, norm_num_groups=8, sample_size=64)


@dataclass(frozen=True)
class VaeConfig:
    schedule: Schedule = Schedule(steps=3000, batch_size=32, lr=2e-3, warmup=200)
    full_res_steps: int = 400  # the last steps see whole 64 px scenes at half the batch; the ones before, 32 px crops
    measure_n: int = 256  # scenes for the PSNR of the export
    run: Path = RUNS / "vae"  # checkpoint folder (resumes)
    out: Path = RUNS / "vae-final"  # export folder


@dataclass(frozen=True)
class DecoderConfig:
    decoder_from: Path  # the trained VAE whose encoder stays frozen
    schedule: Schedule = Schedule(steps=3000, batch_size=16, lr=5e-4, warmup=100)
    edge_weight: float = 1.0  # of decoder_loss's difference term
    measure_n: int = 480  # scenes for the shape fidelity of the export
    run: Path = RUNS / "vae-decoder"
    out: Path = RUNS / "vae-decoder-final"


def batches(config: VaeConfig, start: int):
    """From step `start` on: scenes from step-derived seeds, as 32 px crops (4x cheaper) until the last
    `full_res_steps` steps, which see whole images at half the batch."""
    rng = np.random.default_rng(start)
    steps, batch_size = config.schedule.steps, config.schedule.batch_size
    for step in itertools.count(start):
        crop = None if step >= steps - config.full_res_steps else 32
        size = batch_size if crop else batch_size // 2
        images, _, _ = render_batch(1_000_000 + step * size, size, n_objects=(1, 2), paraphrase=False)
        x = to_tensor(images)
        if crop:
            i, j = rng.integers(0, 64 - crop + 1, size=2)
            x = x[:, :, i:i + crop, j:j + crop]
        yield x.to(device())


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


def train(config: VaeConfig) -> tuple[AutoencoderKL, list[float]]:
    """Train (or resume) the VAE on L1 + L2 + a light KL, export the EMA model with its scaling factor and PSNR;
    returns the model and the loss of every step run."""
    torch.manual_seed(0)
    vae = AutoencoderKL(**CONFIG).to(device())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.schedule.lr, weight_decay=0.0)

    def loss(x: torch.Tensor) -> torch.Tensor:
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        return (rec - x).abs().mean() + ((rec - x) ** 2).mean() + 1e-6 * posterior.kl().mean()

    loop = Loop("vae", config.schedule, config.run, ema_decay=0.995, ema_warmup=False, clip=None, save_every=500)
    losses = train_loop(loop, {"vae": vae}, optimizer, lambda start: batches(config, start), loss)
    vae.eval()
    vae.register_to_config(scaling_factor=scaling_factor(vae))
    metrics = {"psnr_db": psnr(vae, config.measure_n), "steps": config.schedule.steps,
               "scaling_factor": vae.config.scaling_factor}
    export(vae, metrics, config.out)
    return vae, losses


def export(vae: AutoencoderKL, metrics: dict, folder: Path) -> None:
    """Write the VAE folder (safetensors) with its metrics beside it."""
    print(json.dumps(metrics), flush=True)
    vae.save_pretrained(folder)
    (Path(folder) / "metrics.json").write_text(json.dumps(metrics, indent=2))


@torch.no_grad()
def shape_fidelity(vae: AutoencoderKL, n: int = 480, seed: int = 97_000_000, batch_size: int = 32) -> dict:
    """How often the world's shape detector names the right shape on reconstructions of single-object scenes, from
    posterior samples (the latents the diffusion models learn): the ceiling of every shape accuracy measured on
    generated images, since no sample can be decoded sharper than the decoder draws the data."""
    images, scenes, _ = render_batch(seed, n, n_objects=1, exclude=frozenset(), paraphrase=False)
    gen = torch.Generator().manual_seed(seed)
    hits, by_shape = [], {s: [] for s in SHAPES}
    for i in range(0, n, batch_size):
        x = to_tensor(images[i:i + batch_size]).to(vae.device)
        z = vae.encode(x).latent_dist.sample(gen)
        rec = ((vae.decode(z).sample.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for image, scene in zip(rec, scenes[i:i + batch_size]):
            _, found = detect(image)
            hit = bool(found) and found[0].shape == scene.objects[0].shape
            hits.append(hit)
            by_shape[scene.objects[0].shape].append(hit)
    return {"accuracy": float(np.mean(hits)), "by_shape": {k: float(np.mean(v)) for k, v in by_shape.items() if v}}


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def decoder_loss(rec: torch.Tensor, x: torch.Tensor, edge_weight: float = 1.0) -> torch.Tensor:
    """L1 + L2 + L1 on horizontal and vertical differences: the difference term is what makes thin features (a
    small star's points, a figure's limbs) worth as much as the flat areas around them."""
    (rx, ry), (tx, ty) = _gradients(rec), _gradients(x)
    edges = (rx - tx).abs().mean() + (ry - ty).abs().mean()
    return (rec - x).abs().mean() + ((rec - x) ** 2).mean() + edge_weight * edges


def posterior_batches(vae: AutoencoderKL, batch_size: int, start: int):
    """From step `start` on: scenes from step-derived seeds and posterior samples of the frozen encoder."""
    gen = torch.Generator().manual_seed(start)
    for step in itertools.count(start):
        images, _, _ = render_batch(50_000_000 + step * batch_size, batch_size, n_objects=(1, 2), paraphrase=False)
        x = to_tensor(images).to(vae.device)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(gen)
        yield z, x


def finetune_decoder(config: DecoderConfig) -> tuple[AutoencoderKL, list[float]]:
    """Train (or resume) only the decoder of a trained VAE at full size, on posterior samples of its frozen encoder,
    as Stability's ft-MSE decoder was: the encoder, and with it every latent the other models were trained on,
    stays bit-identical, so the fine-tuned VAE is a drop-in replacement. Returns the VAE and each step's loss."""
    torch.manual_seed(0)
    vae = AutoencoderKL.from_pretrained(config.decoder_from).to(device())
    vae.requires_grad_(False)
    head = torch.nn.ModuleDict({"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv})
    head.requires_grad_(True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.schedule.lr, weight_decay=0.0)

    def loss(batch) -> torch.Tensor:
        z, x = batch
        return decoder_loss(vae.decode(z).sample, x, config.edge_weight)

    losses = train_loop(Loop("decoder", config.schedule, config.run), {"head": head}, optimizer,
                        lambda start: posterior_batches(vae, config.schedule.batch_size, start), loss)
    vae.eval()
    metrics = {"psnr_db": psnr(vae, min(256, config.measure_n)), "shape_fidelity": shape_fidelity(
        vae, config.measure_n), "decoder_steps": config.schedule.steps, "scaling_factor": vae.config.scaling_factor,
        "encoder_from": str(config.decoder_from)}
    export(vae, metrics, config.out)
    return vae, losses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_schedule_arguments(parser, VaeConfig.schedule, ("steps",))
    parser.add_argument("--decoder-from", type=Path,
                        help="fine-tune only the decoder of this VAE folder (its encoder stays frozen)")
    parser.add_argument("--run", type=Path, default=DecoderConfig.run, help="checkpoint folder (resumes)")
    parser.add_argument("--out", type=Path, default=DecoderConfig.out, help="export folder")
    parser.add_argument("--lr", type=float, default=DecoderConfig.schedule.lr)
    parser.add_argument("--edge-weight", type=float, default=DecoderConfig.edge_weight)
    parser.add_argument("--measure", type=Path, help="only print this VAE folder's PSNR and shape fidelity")
    args = parser.parse_args(argv)
    if args.measure:
        vae = AutoencoderKL.from_pretrained(args.measure).eval()
        print(json.dumps({"psnr_db": psnr(vae), "shape_fidelity": shape_fidelity(vae)}), flush=True)
    elif args.decoder_from:
        finetune_decoder(config_from(DecoderConfig, args))
    else:
        train(VaeConfig(schedule=replace(VaeConfig.schedule, steps=args.steps)))  # the other flags are the decoder's


if __name__ == "__main__":
    main()
