"""Recipe: the miniature Stable Diffusion. A CLIP text encoder and a cross-attention UNet trained together on the
world's captions, with the caption dropped 15% of the time so one network learns both c and u (Ho and Salimans)."""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from engine.tokenizer import build_clip_tokenizer
from world import VOCABULARY, caption

from . import pool as latent_pool
from .common import EMA, MODELS, RUNS, Log, cosine_lr, device, load_checkpoint, save_checkpoint

MAX_TOKENS = 32
P_UNCOND = 0.15
EMBED_STD = 1.0
UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
            attention_head_dim=8, norm_num_groups=16)
# The same UNet with cross-attention at every level, 16x16 included: finer places to bind words to objects.
UNET_ATTN16 = {**UNET, "down_block_types": ("CrossAttnDownBlock2D",) * 3, "up_block_types": ("CrossAttnUpBlock2D",) * 3}
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def text_config(tokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)


def min_snr_weights(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float = 5.0,
                    floor: float = 0.0) -> torch.Tensor:
    """Loss weights for eps prediction. The eps loss equals SNR times the x0 loss, so the x0 loss is weighted by
    clamp(SNR, floor, gamma): gamma caps the easy low-noise steps (Min-SNR, Hang et al., 2023); a floor keeps the
    high-noise steps, where SD's schedule leaves SNR near 0.005 and layout is decided, from counting for nothing
    (the reason position is lost; see Lin et al., 2024, on what the last timesteps carry)."""
    a = scheduler.alphas_cumprod.to(t.device)[t]
    snr = a / (1 - a)
    return torch.clamp(snr, min=floor, max=gamma) / snr


def spread_token_embeddings(text_encoder: CLIPTextModel, std: float, seed: int = 0) -> None:
    """Re-draw the word embeddings at `std` (CLIP's init uses 0.02). At 0.02 a word is a faint signal beside the
    residual stream's shared part, and a word the UNet has not learned to use yet, such as a position word, stays
    faint and is averaged away: the text encoder then gives "on the left" and "on the right" the same output, so
    no amount of UNet training can place the object. Drawn at unit scale, every word starts distinct."""
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed)) * std)


def parameter_groups(modules: list[torch.nn.Module], weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on embeddings and norms (decay would shrink unused words back together)."""
    decay, keep = [], []
    for module in modules:
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            (keep if param.ndim < 2 or "embedding" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def unet_config(attn16: bool, run: Path | None = None) -> dict:
    """`UNET_ATTN16` or `UNET`; a run that has a checkpoint keeps the one it was trained with."""
    path = None if run is None else run / "checkpoint.safetensors"
    if path is not None and path.is_file():
        with safe_open(str(path), "pt") as f:
            attn16 = any(key.startswith("unet.down_blocks.0.attentions.") for key in f.keys())
    return UNET_ATTN16 if attn16 else UNET


def start_from(init: Path, modules: dict[str, torch.nn.Module]) -> list[str]:
    """Load `init`'s EMA weights into `modules`, the start of a fine-tune stage. Blocks the init lacks start as the
    identity, so the grown model first computes exactly what the init did: attention blocks of a UNet grown to
    `UNET_ATTN16` with their output projection zeroed, and DiT blocks appended to a deeper DiT (`--layers`) with
    their adaLN-zero modulation zeroed (gates 0: attention and MLP add nothing). Returns the names of those blocks;
    any other mismatch is an error."""
    tensors = load_file(str(init / "checkpoint.safetensors"))
    grown = []
    for name, module in modules.items():
        prefix = f"ema.{name}."
        missing, unexpected = module.load_state_dict(
            {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=False)
        pattern = r"(down|up)_blocks\.\d+\.attentions\.\d+|transformer_blocks\.\d+"
        new = sorted({m.group(0) for key in missing if (m := re.match(pattern, key))})
        stray = [key for key in missing if not any(key.startswith(block + ".") for block in new)]
        if unexpected or stray:
            raise ValueError(f"{init} does not fit this {name}: unexpected {unexpected[:3]}, missing {stray[:3]}.")
        for block in new:
            sub = module.get_submodule(block)
            zeroed = sub.proj_out if hasattr(sub, "proj_out") else sub.norm1.linear
            torch.nn.init.zeros_(zeroed.weight)
            torch.nn.init.zeros_(zeroed.bias)
        grown += [f"{name}.{block}" for block in new]
    return grown


def start_stage(init: Path | None, run: Path, modules: dict[str, torch.nn.Module]) -> None:
    """A new stage starts from `init`'s averaged weights (as shipped) unless `run` already has a checkpoint to
    resume; no `init` leaves the modules as built."""
    if init is None or (run / "checkpoint.safetensors").is_file():
        return
    grown = start_from(init, modules)
    print(f"started from {init}" + (f", grew {', '.join(grown)}" if grown else ""), flush=True)


def tokenizer_for(run: Path, init: Path | None) -> CLIPTokenizer:
    """The tokenizer a run was trained with (saved beside its checkpoint), else its init run's, else a new one.
    The BPE trainer breaks ties differently between processes, so a resumed run must not build it again."""
    for folder in (run, init):
        if folder is not None and (folder / "tokenizer" / "tokenizer_config.json").is_file():
            return CLIPTokenizer.from_pretrained(folder / "tokenizer")
    return build_clip_tokenizer(VOCABULARY, model_max_length=MAX_TOKENS)


def draw(rng: np.random.Generator, groups: tuple[np.ndarray, np.ndarray], batch_size: int,
         two_share: float | None) -> np.ndarray:
    """Pool indices for one batch: uniform over the pool, or `two_share` of them from its two-object scenes (a
    stage that teaches which attributes belong to which object needs more of them than the pool's third).
    `groups` holds the pool's one-object and two-object indices."""
    one, two = groups
    if two_share is None:
        return rng.integers(len(one) + len(two), size=batch_size)
    pick_two = rng.random(batch_size) < two_share
    return np.where(pick_two, two[rng.integers(len(two), size=batch_size)],
                    one[rng.integers(len(one), size=batch_size)])


def train(steps: int, vae_folder: Path, batch_size: int = 32, lr: float = 1e-3, run: Path | None = None,
          out: Path | None = None, warmup: int = 200, pool: Path = latent_pool.POOL,
          pool_size: int = 30_000, init: Path | None = None, floor: float = 0.0,
          embed_std: float = EMBED_STD, freeze_text: bool = False, two_share: float | None = None,
          attn16: bool = False) -> list[float]:
    """Train (or resume) the text encoder and UNet on the latent pool (built from `vae_folder` if missing),
    export the EMA weights; returns the loss of every step run. `init` starts a new run from another run's EMA
    weights (a fine-tune stage, fresh optimizer); `floor` is the x0-loss weight floor of `min_snr_weights`;
    `embed_std` the scale word embeddings are drawn at (`spread_token_embeddings`); `freeze_text` keeps the text
    encoder at its initial weights; `two_share` draws that share of each batch from two-object scenes (None: the
    pool's own mix, a third); `attn16` builds `UNET_ATTN16` (an `init` without its 16x16 attention grows it; a
    resumed run keeps its own layout)."""
    torch.manual_seed(0)
    dev = device()
    vae = AutoencoderKL.from_pretrained(vae_folder).to(dev).eval().requires_grad_(False)
    scenes = latent_pool.ensure(pool, pool_size, vae_folder)
    run = run or RUNS / "text2img"
    tokenizer = tokenizer_for(run, init)
    text_encoder = CLIPTextModel(text_config(tokenizer)).to(dev)
    spread_token_embeddings(text_encoder, embed_std)
    text_encoder.requires_grad_(not freeze_text)
    unet = UNet2DConditionModel(**unet_config(attn16, run)).to(dev)
    noise_schedule = DDPMScheduler(**SCHEDULE)
    params = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups([unet, text_encoder], 0.01), lr=lr)
    modules = {"unet": unet, "text_encoder": text_encoder}
    start_stage(init, run, modules)
    emas = {"unet": EMA(unet, 0.999), "text_encoder": EMA(text_encoder, 0.999)}
    losses = []
    start = load_checkpoint(run, modules, optimizer, emas)
    tokenizer.save_pretrained(run / "tokenizer")
    groups = (scenes.indices(n_objects=1), scenes.indices(n_objects=2))
    if len(groups[0]) + len(groups[1]) != len(scenes):
        raise ValueError(f"The pool at {pool} has scenes with other than one or two objects; rebuild it.")
    log = Log("text2img", steps, start)
    gen = torch.Generator().manual_seed(start)
    rng = np.random.default_rng(start)
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        index = torch.from_numpy(draw(rng, groups, batch_size, two_share))
        latents = scenes.latents(index, gen).to(dev)
        captions = ["" if rng.random() < P_UNCOND else caption(scenes.scenes[i], rng) for i in index.tolist()]
        ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                        return_tensors="pt").input_ids.to(dev)
        with torch.set_grad_enabled(not freeze_text):
            embeds = text_encoder(ids)[0]  # (B, L, D)
        noise = torch.randn(latents.shape, generator=gen).to(dev)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch_size,), generator=gen).to(dev)
        noisy = noise_schedule.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=embeds).sample
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * min_snr_weights(
            noise_schedule, t, floor=floor)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        for name, module in (("unet", unet), ("text_encoder", text_encoder)):
            emas[name].decay = min(0.999, (1 + step) / (10 + step))
            emas[name].update(module)
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log(step, loss=loss.item())
        if (step + 1) % 250 == 0 or step + 1 == steps:
            save_checkpoint(run, step + 1, modules, optimizer, emas)
    export(vae, tokenizer, text_encoder, unet, emas, out or MODELS / "lab-sd")
    return losses


def export(vae, tokenizer, text_encoder, unet, emas, folder: Path) -> None:
    """Write the EMA weights as a StableDiffusionPipeline folder (safetensors)."""
    emas["unet"].copy_to(unet)
    emas["text_encoder"].copy_to(text_encoder)
    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    print(f"saved {folder}", flush=True)


def export_from_checkpoint(vae_folder: Path, run: Path, out: Path) -> None:
    """Export the latest checkpoint's EMA weights without training further (its UNet layout read from it)."""
    dev = device()
    vae = AutoencoderKL.from_pretrained(vae_folder).to(dev).eval()
    tokenizer = tokenizer_for(run, None)
    text_encoder = CLIPTextModel(text_config(tokenizer)).to(dev)
    unet = UNet2DConditionModel(**unet_config(False, run)).to(dev)
    optimizer = torch.optim.AdamW(parameter_groups([unet, text_encoder], 0.01))  # the layout `train` saves
    emas = {"unet": EMA(unet, 0.999), "text_encoder": EMA(text_encoder, 0.999)}
    step = load_checkpoint(run, {"unet": unet, "text_encoder": text_encoder}, optimizer, emas)
    print(f"exporting step {step}", flush=True)
    export(vae, tokenizer, text_encoder, unet, emas, out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=9000)
    parser.add_argument("--vae", type=Path, default=RUNS / "vae-final")
    parser.add_argument("--export-only", action="store_true", help="export the latest checkpoint and stop")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--floor", type=float, default=0.0, help="x0-loss weight floor at high noise")
    parser.add_argument("--embed-std", type=float, default=EMBED_STD, help="scale of the initial word embeddings")
    parser.add_argument("--freeze-text", action="store_true", help="keep the text encoder at its initial weights")
    parser.add_argument("--run", type=Path, default=RUNS / "text2img", help="checkpoint folder (resumes)")
    parser.add_argument("--two-share", type=float, help="share of each batch drawn from two-object scenes")
    parser.add_argument("--init", type=Path, help="start a new stage from this run's EMA weights")
    parser.add_argument("--out", type=Path, default=MODELS / "lab-sd", help="export folder")
    parser.add_argument("--attn16", action="store_true",
                        help="cross-attention at 16x16 too (grown from an --init that lacks it; a resumed run keeps its own)")
    args = parser.parse_args(argv)
    if args.two_share is not None and not 0 <= args.two_share <= 1:
        parser.error(f"--two-share must be between 0 and 1, got {args.two_share}.")
    started = time.time()
    if args.export_only:
        export_from_checkpoint(args.vae, args.run, args.out)
    else:
        train(args.steps, args.vae, lr=args.lr, run=args.run, out=args.out, warmup=args.warmup, init=args.init,
              floor=args.floor, embed_std=args.embed_std, freeze_text=args.freeze_text, two_share=args.two_share,
              attn16=args.attn16)
    print(json.dumps({"seconds": round(time.time() - started)}), flush=True)


if __name__ == "__main__":
    main()
