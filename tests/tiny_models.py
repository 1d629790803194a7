"""Tiny seeded models built from configs and saved in the hub layout, as diffusers' own tests build them."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, DiTPipeline, DiTTransformer2DModel,
                       StableDiffusionPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel

from engine.registry import write_id2label
from engine.tokenizer import build_clip_tokenizer

WORDS = "a an the small large red green blue yellow circle square triangle star on left right top bottom".split()


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=4, norm_num_groups=2)


def tiny_scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def tiny_sd() -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=2)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32,
                                                intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4,
                                                num_hidden_layers=2, vocab_size=1000, max_position_embeddings=16))
    tokenizer = build_clip_tokenizer(WORDS, model_max_length=16)
    return StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=tiny_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def tiny_controlnet(unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    # from_unet starts with zero convolutions; give them weights so the control visibly acts in tests.
    with torch.no_grad():
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            module.weight.normal_(0, 0.3)
    return controlnet


def tiny_dit() -> DiTPipeline:
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                        num_attention_heads=2, in_channels=4, out_channels=8,
                                        activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                        norm_elementwise_affine=False)
    return DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=tiny_scheduler())


def save_all(root: Path) -> dict[str, Path]:
    """Save the tiny SD, two ControlNets and DiT under root; return their folders."""
    sd = tiny_sd()
    folders = {"sd": root / "tiny-sd", "controlnet": root / "tiny-controlnet",
               "controlnet2": root / "tiny-controlnet-2", "dit": root / "tiny-dit"}
    sd.save_pretrained(folders["sd"])
    tiny_controlnet(sd.unet, 0).save_pretrained(folders["controlnet"])
    tiny_controlnet(sd.unet, 1).save_pretrained(folders["controlnet2"])
    tiny_dit().save_pretrained(folders["dit"])
    write_id2label(folders["dit"], ["circle", "square", "triangle"])
    return folders
