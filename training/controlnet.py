"""Recipe: ControlNets for the miniature Stable Diffusion (Zhang, Rao and Agrawala, 2023). A trainable copy of the
frozen UNet's encoder reads a canny, scribble or pose map through zero convolutions, so training starts from the
base model exactly; the caption is dropped half the time so the net must read the control.
`python -m training.controlnet canny --steps 1600` (or `all`)."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, DDPMScheduler, StableDiffusionPipeline

from .common import MODELS, RUNS, add_schedule_arguments, config_from, device, to_tensor
from .control_data import TYPES, control_batch, to_control
from .diffusion import weighted_eps_loss
from .loop import EMA, Loop, Schedule, train as train_loop

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
    return weighted_eps_loss(pred, noise, schedule, t)  # (B,)


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


@dataclass(frozen=True)
class ControlNetConfig:
    control_type: str  # one of TYPES
    schedule: Schedule = Schedule(steps=1600, batch_size=16, lr=2e-3, warmup=100)
    base: Path = MODELS / "lab-sd"  # the frozen StableDiffusionPipeline
    run: Path | None = None  # checkpoint folder (resumes); None: runs/controlnet-<type>
    out: Path | None = None  # export folder; None: assets/models/lab-controlnet-<type>
    validate: bool = True  # print the held-out loss at every checkpoint

    def __post_init__(self):
        if self.control_type not in TYPES:
            raise ValueError(f"Unknown control type '{self.control_type}'; choose one of {', '.join(TYPES)}.")


def batches(pipe: StableDiffusionPipeline, control_type: str, batch_size: int, start: int):
    """From step `start` on: each step's batch rendered from a step-derived seed, so a resumed run sees the same
    data, encoded by the frozen base, with the generator its noise comes from."""
    for step in itertools.count(start):
        seed = SEEDS[control_type] + step * batch_size
        rng = np.random.default_rng([seed, 1])  # a stream apart from the scene sampler's, which uses `seed` alone
        gen = torch.Generator().manual_seed(seed)
        images, maps, captions, _ = control_batch(control_type, seed, batch_size)
        captions = ["" if rng.random() < P_DROP_CAPTION else c for c in captions]
        latents, embeds = encode(pipe, images, captions, gen)
        yield latents, embeds, to_control(maps).to(latents.device), gen  # controls (B, 3, 64, 64)


def train(config: ControlNetConfig) -> list[float]:
    """Train (or resume) one ControlNet on fresh rendered scenes, export its EMA weights; returns every step's loss."""
    torch.manual_seed(0)
    pipe = load_base(Path(config.base), device())
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    controlnet = new_controlnet(pipe).to(device()).train()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=config.schedule.lr, weight_decay=0.01)
    validation = Validation(config.control_type, pipe, schedule) if config.validate else None

    def loss(batch) -> torch.Tensor:
        latents, embeds, controls, gen = batch
        return control_loss(controlnet, pipe, schedule, latents, embeds, controls, gen).mean()

    def report(step: int, emas: dict[str, EMA]) -> None:
        if validation is not None:
            report_validation(validation, controlnet, emas["controlnet"], step)

    name = f"controlnet-{config.control_type}"
    loop = Loop(name, config.schedule, config.run or RUNS / name, ema_decay=EMA_DECAY)
    losses = train_loop(loop, {"controlnet": controlnet}, optimizer,
                        lambda start: batches(pipe, config.control_type, config.schedule.batch_size, start), loss,
                        report)
    export(controlnet, config.out or MODELS / f"lab-{name}")
    return losses


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


def export(controlnet: ControlNetModel, folder: Path) -> None:
    """Write a ControlNetModel folder (safetensors)."""
    controlnet.eval().save_pretrained(folder, safe_serialization=True)
    print(f"saved {folder}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("control_type", choices=[*TYPES, "all"])
    add_schedule_arguments(parser, ControlNetConfig.schedule, ("steps", "batch_size", "lr"))
    parser.add_argument("--base", type=Path, default=ControlNetConfig.base, help="the frozen StableDiffusionPipeline")
    parser.add_argument("--run", type=Path, help="checkpoint folder (default runs/controlnet-<type>)")
    parser.add_argument("--out", type=Path, help="export folder (default assets/models/lab-controlnet-<type>)")
    args = parser.parse_args(argv)
    types = TYPES if args.control_type == "all" else (args.control_type,)
    if len(types) > 1 and (args.run or args.out):
        parser.error("--run and --out name one ControlNet's folders; give a single control type with them.")
    for control_type in types:
        started = time.time()
        train(config_from(ControlNetConfig, args, control_type=control_type))
        print(json.dumps({"control_type": control_type, "seconds": round(time.time() - started)}), flush=True)


if __name__ == "__main__":
    main()
