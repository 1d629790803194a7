"""The published SD1.5, SDXL and SD3.5 Medium architectures, built from their configs with random weights (nothing is
downloaded) and saved as diffusers folders: what `python -m engine bench --device cuda` and tests/gpu time.

The configs are those of the hub folders' unet/, transformer/, vae/ and text_encoder*/ config.json files; the
tokenizers are built offline (their vocabularies do not change the cost of a run, their sequence lengths do).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel,
                          T5TokenizerFast)

from .tokenizer import build_clip_tokenizer

WORDS = "a photo of an astronaut riding a horse on the moon in a red circle large small blue star".split()
SCALED_LINEAR = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)

SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, out_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, sample_size=64)
SDXL_UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, in_channels=4, out_channels=4, layers_per_block=2, norm_eps=1e-5,
    norm_num_groups=32, projection_class_embeddings_input_dim=2816, sample_size=128,
    transformer_layers_per_block=[1, 2, 10], use_linear_projection=True)
SD35_MEDIUM_TRANSFORMER = dict(
    attention_head_dim=64, caption_projection_dim=1536, dual_attention_layers=list(range(13)), in_channels=16,
    joint_attention_dim=4096, num_attention_heads=24, num_layers=24, out_channels=16, patch_size=2,
    pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm", sample_size=128)


def _vae(latent_channels: int = 4, **extra) -> dict:
    blocks = 4
    return dict(act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * blocks,
                up_block_types=["UpDecoderBlock2D"] * blocks, in_channels=3, out_channels=3, layers_per_block=2,
                latent_channels=latent_channels, norm_num_groups=32, **extra)


SD15_VAE = _vae(sample_size=512, scaling_factor=0.18215)
SDXL_VAE = _vae(sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SD3_VAE = _vae(16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
               use_post_quant_conv=False)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@dataclass(frozen=True)
class Architecture:
    """A published model family at its native size, with the guidance scale and scheduler the bench runs."""

    name: str
    family: str
    size: int
    scale: float
    scheduler: str


ARCHITECTURES = {a.name: a for a in (
    Architecture("sd15", "sd", 512, 7.5, "ddim"),
    Architecture("sdxl", "sdxl", 1024, 5.0, "euler"),
    Architecture("sd35-medium", "sd3", 1024, 4.5, "flow-euler"),
)}


def t5_tokenizer(words=WORDS, model_max_length: int = 256) -> T5TokenizerFast:
    """A word-level T5 tokenizer made offline: pad 0, end-of-sequence 1, unknown 2, as T5's ids are."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=model_max_length)


def build(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0):
    """The named architecture as a diffusers pipeline with random weights (seeded), its modules on `device` in
    `dtype`, made there directly (a 4.7B T5 is not built on the CPU first)."""
    torch.manual_seed(seed)
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}.")
    with torch.device(device):  # the modules only: schedulers keep their tables on the CPU
        modules = _modules(name)
    clip = build_clip_tokenizer(WORDS, model_max_length=77)
    if name == "sd15":
        scheduler = DDIMScheduler(**SCALED_LINEAR, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(**modules, tokenizer=clip, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    elif name == "sdxl":
        scheduler = EulerDiscreteScheduler(**SCALED_LINEAR, steps_offset=1, timestep_spacing="leading")
        pipe = StableDiffusionXLPipeline(**modules, tokenizer=clip, tokenizer_2=clip, scheduler=scheduler)
    else:
        pipe = StableDiffusion3Pipeline(**modules, tokenizer=clip, tokenizer_2=clip, tokenizer_3=t5_tokenizer(),
                                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    return pipe.to(dtype=dtype)


def _modules(name: str) -> dict[str, torch.nn.Module]:
    if name == "sd15":
        return dict(unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**SD15_VAE),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)))
    if name == "sdxl":
        return dict(unet=UNet2DConditionModel(**SDXL_UNET), vae=AutoencoderKL(**SDXL_VAE),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                    text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)))
    return dict(transformer=SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER), vae=AutoencoderKL(**SD3_VAE),
                text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)),
                text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)),
                text_encoder_3=T5EncoderModel(T5Config(**T5_XXL)))


def save(name: str, folder: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Path:
    """Build the named architecture and save it as a diffusers folder (safetensors) at `folder`."""
    pipe = build(name, dtype, device)
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe
    return Path(folder)


def parameter_counts(name: str) -> dict[str, int]:
    """Parameters per module of the named architecture, counted on the meta device (no memory, no weights)."""
    pipe = build(name, device="meta")
    return {key: sum(p.numel() for p in module.parameters()) for key, module in pipe.components.items()
            if isinstance(module, torch.nn.Module)}
