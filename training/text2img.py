"""Recipe: the miniature Stable Diffusion. A CLIP text encoder and a cross-attention UNet trained together on the
world's captions, with the caption dropped 15% of the time so one network learns both c and u (Ho and Salimans).
`python -m training.text2img --steps 9000`."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from engine.models.tokenizer import build_clip_tokenizer
from world import VOCABULARY, caption

from . import latents
from .checkpoint import load_averaged, start_stage
from .common import MODELS, RUNS, add_schedule_arguments, config_from, device
from .diffusion import SCHEDULE, weighted_eps_loss
from .loop import Loop, Schedule, train as train_loop

MAX_TOKENS = 32
P_UNCOND = 0.15
EMBED_STD = 1.0
UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
            attention_head_dim=8, norm_num_groups=16)
# The same UNet with cross-attention at every level, 16x16 included: finer places to bind words to objects.
UNET_ATTN16 = {**UNET, "down_block_types": ("CrossAttnDownBlock2D",) * 3, "up_block_types": ("CrossAttnUpBlock2D",) * 3}


def text_config(tokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)


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


def unet_config(attn16: bool, run: Path | None = None, block_out_channels: tuple[int, ...] | None = None,
                layers_per_block: int | None = None) -> dict:
    """`UNET_ATTN16` or `UNET`, with other widths or depths if given (a smaller UNet of the same layout, such as
    AutoGuidance's weak model); a run that has a checkpoint keeps the one it was trained with."""
    path = None if run is None else run / "checkpoint.safetensors"
    if path is not None and path.is_file():
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            attn16 = any(key.startswith("unet.down_blocks.0.attentions.") for key in keys)
            levels = len(UNET["block_out_channels"])
            block_out_channels = tuple(f.get_slice(f"unet.down_blocks.{i}.resnets.0.conv1.weight").get_shape()[0]
                                       for i in range(levels))
            prefix = "unet.down_blocks.0.resnets."
            layers_per_block = len({key[len(prefix):].split(".")[0] for key in keys if key.startswith(prefix)})
    base = UNET_ATTN16 if attn16 else UNET
    changes = {}
    if block_out_channels is not None and tuple(block_out_channels) != base["block_out_channels"]:
        changes["block_out_channels"] = tuple(block_out_channels)
    if layers_per_block is not None and layers_per_block != base["layers_per_block"]:
        changes["layers_per_block"] = layers_per_block
    return {**base, **changes} if changes else base


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


@dataclass(frozen=True, kw_only=True)
class Text2ImgConfig(latents.PoolRecipeConfig):
    schedule: Schedule = Schedule(steps=9000, batch_size=32, lr=1e-3, warmup=200)
    run: Path = RUNS / "text2img"  # checkpoint folder (resumes)
    out: Path = MODELS / "lab-sd"  # export folder
    floor: float = 0.0  # the x0-loss weight floor of `min_snr_weights`
    embed_std: float = EMBED_STD  # the scale word embeddings are drawn at (`spread_token_embeddings`)
    freeze_text: bool = False  # keep the text encoder at its initial weights
    two_share: float | None = None  # share of each batch from two-object scenes (None: the pool's own third)
    attn16: bool = False  # build UNET_ATTN16 (an init without it grows it; a resumed run keeps its own layout)
    block_out_channels: tuple[int, ...] | None = None  # other UNet widths (None: the layout's own)
    layers_per_block: int | None = None  # other UNet depth (None: the layout's own)
    text_encoder_from: Path | None = None  # a pipeline folder whose tokenizer and text encoder are used, frozen
    export_unet_only: bool = False  # export only the UNet, as a UNet2DConditionModel folder


def batches(pool: latents.Pool, tokenizer: CLIPTokenizer, config: Text2ImgConfig, start: int):
    """From step `start` on: pool latents, token ids of their captions (dropped to "" at P_UNCOND), noise and
    timesteps, all drawn from generators seeded by `start`."""
    groups = (pool.indices(n_objects=1), pool.indices(n_objects=2))
    if len(groups[0]) + len(groups[1]) != len(pool):
        raise ValueError(f"The pool at {config.pool} has scenes with other than one or two objects; rebuild it.")
    gen = torch.Generator().manual_seed(start)
    rng = np.random.default_rng(start)
    dev = device()
    batch_size = config.schedule.batch_size
    while True:
        index = torch.from_numpy(draw(rng, groups, batch_size, config.two_share))
        x0 = pool.latents(index, gen).to(dev)  # (B, 4, 16, 16)
        captions = ["" if rng.random() < P_UNCOND else caption(pool.scenes[i], rng) for i in index.tolist()]
        ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                        return_tensors="pt").input_ids.to(dev)  # (B, L)
        noise = torch.randn(x0.shape, generator=gen).to(dev)  # (B, 4, 16, 16)
        t = torch.randint(0, SCHEDULE["num_train_timesteps"], (batch_size,), generator=gen).to(dev)  # (B,)
        yield x0, ids, noise, t


def pretrained_text(folder: Path) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """A pipeline folder's tokenizer and text encoder, frozen: a UNet trained on them reads that model's prompt
    embeddings (AutoGuidance's weak model must take the same conditioning as the model it guides)."""
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").to(device()).eval().requires_grad_(False)
    return tokenizer, text_encoder


def train(config: Text2ImgConfig) -> list[float]:
    """Train (or resume) the text encoder and UNet together on the latent pool with min-SNR-weighted eps MSE,
    export the EMA weights as a StableDiffusionPipeline; returns the loss of every step run. With
    `text_encoder_from`, only the UNet is trained (and checkpointed), on that folder's frozen text encoder."""
    torch.manual_seed(0)
    dev = device()
    vae = AutoencoderKL.from_pretrained(config.vae).to(dev).eval().requires_grad_(False)
    pool = config.load()
    if config.text_encoder_from is not None:
        tokenizer, text_encoder = pretrained_text(config.text_encoder_from)
    else:
        tokenizer = tokenizer_for(config.run, config.init)
        text_encoder = CLIPTextModel(text_config(tokenizer)).to(dev)
        spread_token_embeddings(text_encoder, config.embed_std)
        text_encoder.requires_grad_(not config.freeze_text)
    frozen = config.freeze_text or config.text_encoder_from is not None
    unet = UNet2DConditionModel(**unet_config(config.attn16, config.run, config.block_out_channels,
                                              config.layers_per_block)).to(dev)
    schedule = DDPMScheduler(**SCHEDULE)
    optimizer = torch.optim.AdamW(parameter_groups([unet, text_encoder], 0.01), lr=config.schedule.lr)
    modules = {"unet": unet} if config.text_encoder_from is not None else {"unet": unet, "text_encoder": text_encoder}
    start_stage(config.init, config.run, modules)
    tokenizer.save_pretrained(config.run / "tokenizer")

    def loss(batch) -> torch.Tensor:
        x0, ids, noise, t = batch
        with torch.set_grad_enabled(not frozen):
            embeds = text_encoder(ids)[0]  # (B, L, D)
        pred = unet(schedule.add_noise(x0, noise, t), t, encoder_hidden_states=embeds).sample  # (B, 4, 16, 16)
        return weighted_eps_loss(pred, noise, schedule, t, floor=config.floor).mean()

    losses = train_loop(Loop("text2img", config.schedule, config.run), modules, optimizer,
                        lambda start: batches(pool, tokenizer, config, start), loss)
    if config.export_unet_only:
        export_unet(unet, config.out)
    else:
        export(vae, tokenizer, text_encoder, unet, config.out)
    return losses


def export(vae, tokenizer, text_encoder, unet, folder: Path) -> None:
    """Write the models as a StableDiffusionPipeline folder (safetensors)."""
    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    print(f"saved {folder}", flush=True)


def export_unet(unet, folder: Path) -> None:
    """Write the UNet alone as a UNet2DConditionModel folder (safetensors)."""
    unet.eval().save_pretrained(folder, safe_serialization=True)
    print(f"saved {folder}", flush=True)


def export_from_checkpoint(vae_folder: Path, run: Path, out: Path, text_encoder_from: Path | None = None,
                           unet_only: bool = False) -> None:
    """Export the latest checkpoint's EMA weights without training further (its UNet layout read from it); a run
    trained on `text_encoder_from`'s frozen text encoder exports with that one."""
    dev = device()
    unet = UNet2DConditionModel(**unet_config(False, run)).to(dev)
    if unet_only:
        step = load_averaged(run, {"unet": unet})
        print(f"exporting step {step}", flush=True)
        export_unet(unet, out)
        return
    vae = AutoencoderKL.from_pretrained(vae_folder).to(dev).eval()
    if text_encoder_from is not None:
        tokenizer, text_encoder = pretrained_text(text_encoder_from)
        modules = {"unet": unet}
    else:
        tokenizer = tokenizer_for(run, None)
        text_encoder = CLIPTextModel(text_config(tokenizer)).to(dev)
        modules = {"unet": unet, "text_encoder": text_encoder}
    step = load_averaged(run, modules)
    print(f"exporting step {step}", flush=True)
    export(vae, tokenizer, text_encoder, unet, out)


def channels(text: str) -> tuple[int, ...]:
    """`--block-out-channels`: one width per UNet level, comma-separated, each a multiple of the 16 norm groups."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(widths) != len(UNET["block_out_channels"]) or any(w <= 0 or w % UNET["norm_num_groups"] for w in widths):
        raise argparse.ArgumentTypeError(f"expected {len(UNET['block_out_channels'])} widths, each a multiple of "
                                         f"{UNET['norm_num_groups']}, got {text!r}")
    return widths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_schedule_arguments(parser, Text2ImgConfig.schedule, ("steps", "lr", "warmup"))
    latents.add_pool_arguments(parser)
    parser.add_argument("--export-only", action="store_true", help="export the latest checkpoint and stop")
    parser.add_argument("--floor", type=float, default=Text2ImgConfig.floor, help="x0-loss weight floor at high noise")
    parser.add_argument("--embed-std", type=float, default=Text2ImgConfig.embed_std,
                        help="scale of the initial word embeddings")
    parser.add_argument("--freeze-text", action="store_true", help="keep the text encoder at its initial weights")
    parser.add_argument("--run", type=Path, default=Text2ImgConfig.run, help="checkpoint folder (resumes)")
    parser.add_argument("--two-share", type=float, help="share of each batch drawn from two-object scenes")
    parser.add_argument("--out", type=Path, default=Text2ImgConfig.out, help="export folder")
    parser.add_argument("--attn16", action="store_true",
                        help="cross-attention at 16x16 too (grown from an --init that lacks it; a resumed run keeps "
                             "its own)")
    parser.add_argument("--block-out-channels", type=channels,
                        help="UNet widths, e.g. 16,32,32 (default: the layout's own; a resumed run keeps its own)")
    parser.add_argument("--layers-per-block", type=int, help="UNet resnets per level (default: the layout's own)")
    parser.add_argument("--text-encoder-from", type=Path,
                        help="train the UNet alone on this pipeline folder's tokenizer and frozen text encoder")
    parser.add_argument("--export-unet-only", action="store_true",
                        help="export only the UNet, as a UNet2DConditionModel folder")
    args = parser.parse_args(argv)
    if args.two_share is not None and not 0 <= args.two_share <= 1:
        parser.error(f"--two-share must be between 0 and 1, got {args.two_share}.")
    started = time.time()
    if args.export_only:
        export_from_checkpoint(args.vae, args.run, args.out, args.text_encoder_from, args.export_unet_only)
    else:
        train(config_from(Text2ImgConfig, args))
    print(json.dumps({"seconds": round(time.time() - started)}), flush=True)


if __name__ == "__main__":
    main()
