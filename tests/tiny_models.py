"""Tiny seeded models built from configs and saved in the hub layout, as diffusers' own tests build them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, DiTPipeline, DiTTransformer2DModel,
                       EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                       StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel,
                          T5Tokenizer)

from engine.models.registry import write_id2label
from engine.models.tokenizer import build_clip_tokenizer

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


def tiny_clip_config(**overrides) -> CLIPTextConfig:
    """The tiny CLIP text encoder's config, with the projection SDXL's and SD3's pooled embeddings need."""
    config = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                  layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
                  max_position_embeddings=16, projection_dim=32, hidden_act="gelu")
    return CLIPTextConfig(**{**config, **overrides})


def tiny_sdxl() -> StableDiffusionXLPipeline:
    """SDXL's layout at toy size: two CLIP encoders (the second with a projection for the pooled embedding), a
    UNet with `text_time` added conditioning (6 size ids of 8 channels each plus the 32-channel pooled embedding)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                                projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
                                norm_num_groups=2)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(tiny_clip_config())
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_config())
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=build_clip_tokenizer(WORDS, model_max_length=16),
                                     tokenizer_2=build_clip_tokenizer(WORDS, model_max_length=16), unet=unet,
                                     scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A unigram T5 tokenizer over WORDS, built offline; other text falls back to single letters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz\u2581"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_sd3(t5: bool = True) -> StableDiffusion3Pipeline:
    """SD3's layout at toy size: CLIP-L and CLIP-G (each with a projection), optionally T5, an MM-DiT and flow
    matching. The joint attention width (64) equals both CLIPs' concatenated width and T5's."""
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=64, pooled_projection_dim=64, out_channels=4,
                                        pos_embed_max_size=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(tiny_clip_config())
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_config())
    text_encoder_3 = tokenizer_3 = None
    if t5:
        torch.manual_seed(2)
        text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tiny_t5_tokenizer()), d_model=64, d_ff=37,
                                                 d_kv=8, num_layers=2, num_heads=4, pad_token_id=0,
                                                 eos_token_id=1, decoder_start_token_id=0))
        tokenizer_3 = tiny_t5_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=text_encoder,
                                    tokenizer=build_clip_tokenizer(WORDS, model_max_length=16),
                                    text_encoder_2=text_encoder_2,
                                    tokenizer_2=build_clip_tokenizer(WORDS, model_max_length=16),
                                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


def save_sdxl(root: Path) -> dict[str, Path]:
    """Save the tiny SDXL and two SDXL ControlNets of its UNet under root; return their folders."""
    sdxl = tiny_sdxl()
    folders = {"sdxl": root / "tiny-sdxl", "sdxl-controlnet": root / "tiny-sdxl-controlnet",
               "sdxl-controlnet-2": root / "tiny-sdxl-controlnet-2"}
    sdxl.save_pretrained(folders["sdxl"])
    tiny_controlnet(sdxl.unet, 0).save_pretrained(folders["sdxl-controlnet"])
    tiny_controlnet(sdxl.unet, 1).save_pretrained(folders["sdxl-controlnet-2"])
    return folders


def save_sd3(root: Path) -> dict[str, Path]:
    """Save the tiny SD3 with T5 and without under root; return their folders."""
    folders = {"sd3": root / "tiny-sd3", "sd3-no-t5": root / "tiny-sd3-no-t5"}
    tiny_sd3(t5=True).save_pretrained(folders["sd3"])
    tiny_sd3(t5=False).save_pretrained(folders["sd3-no-t5"])
    # A folder without T5 lists it as absent, as hub folders list optional parts, so from_pretrained loads it.
    index_path = folders["sd3-no-t5"] / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(text_encoder_3=[None, None], tokenizer_3=[None, None])
    index_path.write_text(json.dumps(index, indent=2))
    return folders


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
