"""Recipe: ControlNets for the miniature Stable Diffusion (Zhang, Rao and Agrawala, 2023). A trainable copy of the
frozen UNet's encoder reads a canny, scribble or pose map through zero convolutions, so training starts from the
base model exactly; the caption is dropped half the time so the net must read the control.
`python -m training.controlnet canny --steps 1600` (or `all`)."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDPMScheduler, StableDiffusionPipeline

from engine.control.prepare import prepare_control
from engine.control.openpose import pose_map
from world import caption, render, sample_scene, scribble
from world.split import HELD_OUT

from .common import EMA, MODELS, RUNS, Log, cosine_lr, device, load_checkpoint, save_checkpoint
from .text2img import min_snr_weights
from .vae import to_tensor

TYPES = ("canny", "scribble", "pose")
P_DROP_CAPTION = 0.5  # the ControlNet paper drops 50% of prompts so the net learns to read the control alone
EMA_DECAY = 0.995  # a horizon of ~200 steps suits runs of 1-2 thousand steps
SEEDS = {"canny": 20_000_000, "scribble": 30_000_000, "pose": 40_000_000}  # step-derived scene seeds start here
VALIDATION_SEED = 90_000_000
VALIDATION_SIZE = 64


def embedding_channels(image_size: int, latent_size: int) -> tuple[int, ...]:
    """Channels of ControlNet's conditioning embedding: one stride-2 conv per halving from image to latent."""
    ratio = image_size // latent_size
    if ratio < 1 or ratio * latent_size != image_size or ratio & (ratio - 1):
        raise ValueError(f"The image side {image_size} must be a power-of-two multiple of the latent side "
                         f"{latent_size}.")
    return tuple(16 * 2 ** i for i in range(int(math.log2(ratio)) + 1))  # (16, 32, 64) for 64 px -> 16 latent


def control_map(control_type: str, rendered, rng: np.random.Generator) -> np.ndarray:
    """(64, 64, 3) uint8 map of a rendered scene, made the way engine/control.py makes a user's input."""
    if control_type == "canny":
        return np.asarray(prepare_control(rendered.image, "canny"))  # default thresholds, as for an upload
    if control_type == "scribble":
        return scribble(rendered, rng)  # drawn on paper, then the user-sketch path: white strokes on black
    if control_type == "pose":
        return pose_map([label.keypoints for label in rendered.labels if label.keypoints is not None], size=64)
    raise ValueError(f"Unknown control type '{control_type}'; choose one of {', '.join(TYPES)}.")


def control_batch(control_type: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray, list[str], list]:
    """(images (n, 64, 64, 3), control maps (n, 64, 64, 3), captions, RenderedScenes); held-out combos excluded."""
    rng = np.random.default_rng(seed)
    shapes = ("figure",) if control_type == "pose" else None
    images = np.empty((n, 64, 64, 3), np.uint8)
    maps = np.empty((n, 64, 64, 3), np.uint8)
    captions, renders = [], []
    for i in range(n):
        scene = sample_scene(rng, n_objects=1 + int(rng.random() < 1 / 3), shapes=shapes, exclude=HELD_OUT)
        rendered = render(scene, rng)
        images[i], maps[i] = rendered.image, control_map(control_type, rendered, rng)
        captions.append(caption(scene, rng))
        renders.append(rendered)
    return images, maps, captions, renders


def to_control(maps: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) maps to float (N, 3, H, W) in [0, 1], as the pipeline's image processor feeds them."""
    return torch.from_numpy(maps).permute(0, 3, 1, 2).float() / 255


def load_base(folder: Path, dev: torch.device) -> StableDiffusionPipeline:
    """The base pipeline with every part frozen: eval mode, no gradients."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if pipe.scheduler.config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"The base model in '{folder}' predicts {pipe.scheduler.config.prediction_type}; "
                         f"this recipe trains eps-prediction ControlNets only.")
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.to(dev).eval().requires_grad_(False)
    return pipe


def new_controlnet(pipe: StableDiffusionPipeline) -> ControlNetModel:
    """A ControlNet copied from the base UNet, its zero convolutions making it a no-op at the start."""
    latent_size = pipe.unet.config.sample_size
    channels = embedding_channels(latent_size * pipe.vae_scale_factor, latent_size)
    return ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=channels)


@torch.no_grad()
def encode(pipe: StableDiffusionPipeline, images: np.ndarray, captions: list[str], gen: torch.Generator):
    """Frozen encoders: scaled VAE latents sampled from the posterior, and the prompts' token embeddings."""
    dev = pipe.unet.device
    posterior = pipe.vae.encode(to_tensor(images).to(dev)).latent_dist
    latents = posterior.sample(gen) * pipe.vae.config.scaling_factor  # (B, 4, h, w)
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(dev)
    return latents, pipe.text_encoder(ids)[0]  # (B, L, D)


def control_loss(controlnet, pipe, schedule: DDPMScheduler, latents, embeds, controls, gen,
                 use_control: bool = True) -> torch.Tensor:
    """Per-sample eps MSE of the frozen UNet plus ControlNet residuals, min-SNR weighted (Hang et al., 2023)."""
    dev = latents.device
    noise = torch.randn(latents.shape, generator=gen).to(dev)  # (B, 4, h, w)
    t = torch.randint(0, schedule.config.num_train_timesteps, (len(latents),), generator=gen).to(dev)  # (B,)
    noisy = schedule.add_noise(latents, noise, t)  # (B, 4, h, w)
    down, mid = None, None
    if use_control:
        down, mid = controlnet(noisy, t, encoder_hidden_states=embeds, controlnet_cond=controls, return_dict=False)
    pred = pipe.unet(noisy, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                     mid_block_additional_residual=mid).sample  # (B, 4, h, w)
    return F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * min_snr_weights(schedule, t)  # (B,)


class Validation:
    """A fixed held-out batch with fixed noise: the loss with the control against the base model's without it."""

    def __init__(self, control_type: str, pipe, schedule: DDPMScheduler):
        self.pipe, self.schedule = pipe, schedule
        images, maps, captions, _ = control_batch(control_type, VALIDATION_SEED, VALIDATION_SIZE)
        self.latents, self.embeds = encode(pipe, images, captions, torch.Generator().manual_seed(0))
        self.controls = to_control(maps).to(pipe.unet.device)  # (B, 3, 64, 64)
        self.base = self(None)

    @torch.no_grad()
    def __call__(self, controlnet) -> float:
        gen = torch.Generator().manual_seed(1)
        return control_loss(controlnet, self.pipe, self.schedule, self.latents, self.embeds, self.controls, gen,
                            use_control=controlnet is not None).mean().item()


def train(control_type: str, steps: int, base: Path = MODELS / "lab-sd", batch_size: int = 16, lr: float = 2e-3,
          run: Path | None = None, out: Path | None = None, warmup: int = 100,
          validate: bool = True) -> list[float]:
    """Train (or resume) one ControlNet on fresh rendered scenes, export its EMA weights; returns every step's loss."""
    if control_type not in TYPES:
        raise ValueError(f"Unknown control type '{control_type}'; choose one of {', '.join(TYPES)}.")
    torch.manual_seed(0)
    dev = device()
    pipe = load_base(Path(base), dev)
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    controlnet = new_controlnet(pipe).to(dev).train()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=lr, weight_decay=0.01)
    emas = {"controlnet": EMA(controlnet, EMA_DECAY)}
    run = run or RUNS / f"controlnet-{control_type}"
    start = load_checkpoint(run, {"controlnet": controlnet}, optimizer, emas)
    validation = Validation(control_type, pipe, schedule) if validate else None
    log = Log(f"controlnet-{control_type}", steps, start)
    losses = []
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        losses.append(train_step(controlnet, pipe, schedule, optimizer, control_type, step, batch_size))
        emas["controlnet"].decay = min(EMA_DECAY, (1 + step) / (10 + step))
        emas["controlnet"].update(controlnet)
        if (step + 1) % 50 == 0:
            log(step, loss=float(np.mean(losses[-50:])))
        if (step + 1) % 250 == 0 or step + 1 == steps:
            save_checkpoint(run, step + 1, {"controlnet": controlnet}, optimizer, emas)
            if validation is not None:
                report_validation(validation, controlnet, emas["controlnet"], step + 1)
    export(controlnet, emas["controlnet"], out or MODELS / f"lab-controlnet-{control_type}")
    return losses


def train_step(controlnet, pipe, schedule, optimizer, control_type: str, step: int, batch_size: int) -> float:
    """One AdamW step on a batch rendered from a step-derived seed, so a resumed run sees the same data."""
    seed = SEEDS[control_type] + step * batch_size
    rng = np.random.default_rng([seed, 1])  # a stream apart from the scene sampler's, which uses `seed` alone
    gen = torch.Generator().manual_seed(seed)
    images, maps, captions, _ = control_batch(control_type, seed, batch_size)
    captions = ["" if rng.random() < P_DROP_CAPTION else c for c in captions]
    latents, embeds = encode(pipe, images, captions, gen)
    controls = to_control(maps).to(latents.device)  # (B, 3, 64, 64)
    loss = control_loss(controlnet, pipe, schedule, latents, embeds, controls, gen).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def report_validation(validation: Validation, controlnet, ema: EMA, step: int) -> None:
    """Print the held-out loss of the base model, the ControlNet and its EMA weights."""
    live = {k: v.detach().clone() for k, v in controlnet.state_dict().items()}
    ema.copy_to(controlnet.eval())
    averaged = validation(controlnet)
    controlnet.load_state_dict(live)
    current = validation(controlnet)
    controlnet.train()
    print(f"[validation] step {step} base {validation.base:.5f} controlnet {current:.5f} ema {averaged:.5f}",
          flush=True)


def export(controlnet: ControlNetModel, ema: EMA, folder: Path) -> None:
    """Write the EMA weights as a ControlNetModel folder (safetensors)."""
    ema.copy_to(controlnet)
    controlnet.eval().save_pretrained(folder, safe_serialization=True)
    print(f"saved {folder}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("control_type", choices=[*TYPES, "all"])
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--base", type=Path, default=MODELS / "lab-sd", help="the frozen StableDiffusionPipeline")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--run", type=Path, help="checkpoint folder (default runs/controlnet-<type>)")
    parser.add_argument("--out", type=Path, help="export folder (default assets/models/lab-controlnet-<type>)")
    args = parser.parse_args(argv)
    types = TYPES if args.control_type == "all" else (args.control_type,)
    if len(types) > 1 and (args.run or args.out):
        parser.error("--run and --out name one ControlNet's folders; give a single control type with them.")
    for control_type in types:
        started = time.time()
        train(control_type, args.steps, args.base, batch_size=args.batch_size, lr=args.lr, run=args.run,
              out=args.out)
        print(json.dumps({"control_type": control_type, "seconds": round(time.time() - started)}), flush=True)


if __name__ == "__main__":
    main()
