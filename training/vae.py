"""Recipe: the AutoencoderKL that maps the world's 64x64x3 scenes to 16x16x4 latents (Rombach et al., 2022)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from world import SHAPES, render_batch
from world.detect import detect

from .common import EMA, MODELS, RUNS, Log, cosine_lr, device, load_checkpoint, optimise, save_checkpoint

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


def finetune_decoder(steps: int, vae_folder: Path, out: Path, run: Path, batch_size: int = 16, lr: float = 5e-4,
                     warmup: int = 100, edge_weight: float = 1.0,
                     measure_n: int = 480) -> tuple[AutoencoderKL, list[float]]:
    """Train (or resume) only the decoder of a trained VAE at full size, on posterior samples of its frozen encoder,
    as Stability's ft-MSE decoder was: the encoder, and with it every latent the other models were trained on,
    stays bit-identical, so the fine-tuned VAE is a drop-in replacement. Returns the VAE and each step's loss."""
    torch.manual_seed(0)
    dev = device()
    vae = AutoencoderKL.from_pretrained(vae_folder).to(dev)
    vae.requires_grad_(False)
    head = torch.nn.ModuleDict({"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv})
    head.requires_grad_(True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    emas = {"head": EMA(head, 0.999)}
    start = load_checkpoint(run, {"head": head}, optimizer, emas)
    gen = torch.Generator().manual_seed(start)
    log = Log("decoder", steps, start)
    losses = []
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        images, _, _ = render_batch(50_000_000 + step * batch_size, batch_size, n_objects=(1, 2), paraphrase=False)
        x = to_tensor(images).to(dev)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(gen)
        loss = decoder_loss(vae.decode(z).sample, x, edge_weight)
        losses.append(optimise(loss, optimizer, {"head": head}, emas, step))
        if (step + 1) % 50 == 0:
            log(step, loss=float(np.mean(losses[-50:])))
        if (step + 1) % 250 == 0 or step + 1 == steps:
            save_checkpoint(run, step + 1, {"head": head}, optimizer, emas)
    emas["head"].copy_to(head)
    vae.eval()
    result = {"psnr_db": psnr(vae, min(256, measure_n)), "shape_fidelity": shape_fidelity(vae, measure_n),
              "decoder_steps": steps, "scaling_factor": vae.config.scaling_factor, "encoder_from": str(vae_folder)}
    print(json.dumps(result), flush=True)
    vae.save_pretrained(out)
    (Path(out) / "metrics.json").write_text(json.dumps(result, indent=2))
    return vae, losses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--decoder-from", type=Path,
                        help="fine-tune only the decoder of this VAE folder (its encoder stays frozen)")
    parser.add_argument("--run", type=Path, default=RUNS / "vae-decoder", help="checkpoint folder (resumes)")
    parser.add_argument("--out", type=Path, default=RUNS / "vae-decoder-final", help="export folder")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--edge-weight", type=float, default=1.0)
    parser.add_argument("--measure", type=Path, help="only print this VAE folder's PSNR and shape fidelity")
    args = parser.parse_args(argv)
    if args.measure:
        vae = AutoencoderKL.from_pretrained(args.measure).eval()
        print(json.dumps({"psnr_db": psnr(vae), "shape_fidelity": shape_fidelity(vae)}), flush=True)
    elif args.decoder_from:
        finetune_decoder(args.steps, args.decoder_from, args.out, args.run, lr=args.lr, edge_weight=args.edge_weight)
    else:
        train(args.steps)


if __name__ == "__main__":
    main()
