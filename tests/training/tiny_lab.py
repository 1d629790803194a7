"""An untrained Stable Diffusion with the lab's geometry (64 px images, 16x16x4 latents) and the shipped lab-sd
tokenizer, which, unlike one trained again, gives every word the same id in every process."""

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from training.common import MODELS
from training.diffusion import SCHEDULE

TOKENIZER = MODELS / "lab-sd" / "tokenizer"


def tiny_lab_sd() -> StableDiffusionPipeline:
    """A 3-block VAE (64 px to 16x16x4), the lab's tokenizer, a one-layer text encoder and a two-level UNet."""
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(4, 8, 8), down_block_types=["DownEncoderBlock2D"] * 3,
                        up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4, norm_num_groups=2, sample_size=64)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4)
    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
