"""ControlNet recipe on a tiny base with the lab's geometry (64 px images, 16x16x4 latents): the maps match the
inference preprocessing, the loss falls, checkpoints resume, and the export serves the engine."""

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from engine.control.prepare import prepare_control
from engine.generate import ControlSpec, Engine, Request
from engine.tokenizer import build_clip_tokenizer
from world import VOCABULARY
from world.split import is_held_out
from training import controlnet, eval_control
from training.text2img import MAX_TOKENS, SCHEDULE


def tiny_lab_sd() -> StableDiffusionPipeline:
    """An untrained SD shaped like lab-sd: a 3-block VAE (64 px to 16x16x4), the lab's tokenizer, a tiny UNet."""
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(4, 8, 8), down_block_types=["DownEncoderBlock2D"] * 3,
                        up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4, norm_num_groups=2, sample_size=64)
    tokenizer = build_clip_tokenizer(VOCABULARY, model_max_length=MAX_TOKENS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4)
    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny-lab-sd"
    tiny_lab_sd().save_pretrained(folder, safe_serialization=True)
    return folder


def test_conditioning_embedding_downsamples_images_to_latents():
    assert controlnet.embedding_channels(64, 16) == (16, 32, 64)
    assert controlnet.embedding_channels(32, 16) == (16, 32)
    with pytest.raises(ValueError, match="power-of-two"):
        controlnet.embedding_channels(48, 16)


@pytest.mark.parametrize("control_type", controlnet.TYPES)
def test_training_maps_look_like_the_inference_preprocessing(control_type):
    images, maps, captions, renders = controlnet.control_batch(control_type, 5, 12)
    assert images.shape == maps.shape == (12, 64, 64, 3) and maps.dtype == np.uint8
    assert all(c for c in captions)
    assert not any(is_held_out(o) for r in renders for o in r.scene.objects)
    lit = maps.max(axis=3) > 0  # (12, 64, 64)
    assert lit.any(axis=(1, 2)).all() and lit.mean() < 0.25  # light content on a black ground
    if control_type == "canny":
        for image, m in zip(images, maps):
            np.testing.assert_array_equal(m, np.asarray(prepare_control(image, "canny")))
    if control_type == "scribble":  # white strokes on black, exactly as sketch_to_scribble turns a user's sketch
        assert set(np.unique(maps)) <= {0, 255} and (maps[..., :1] == maps).all()
    if control_type == "pose":
        assert all(o.shape == "figure" for r in renders for o in r.scene.objects)
        assert (maps[..., 0] != maps[..., 1]).any()  # OpenPose's coloured limbs
    control = controlnet.to_control(maps)
    assert control.shape == (12, 3, 64, 64) and 0 <= control.min() and control.max() <= 1


def test_a_fresh_controlnet_adds_exact_zeros(base):
    pipe = controlnet.load_base(base, torch.device("cpu"))
    net = controlnet.new_controlnet(pipe)
    _, maps, captions, _ = controlnet.control_batch("canny", 0, 2)
    latents = torch.randn(2, 4, 16, 16)
    embeds = pipe.text_encoder(pipe.tokenizer(captions, padding="max_length", return_tensors="pt").input_ids)[0]
    down, mid = net(latents, torch.tensor([500, 500]), encoder_hidden_states=embeds,
                    controlnet_cond=controlnet.to_control(maps), return_dict=False)
    assert all(d.abs().max() == 0 for d in down) and mid.abs().max() == 0
    assert not any(p.requires_grad for p in pipe.unet.parameters())


@pytest.mark.parametrize("control_type", controlnet.TYPES)
def test_smoke_run_loss_falls_resumes_and_exports(base, tmp_path, control_type):
    run, out = tmp_path / "run", tmp_path / "export"
    losses = controlnet.train(control_type, 40, base, batch_size=8, lr=3e-3, run=run, out=out, warmup=5,
                              validate=False)
    assert np.mean(losses[-10:]) < 0.95 * np.mean(losses[:10])
    more = controlnet.train(control_type, 43, base, batch_size=8, lr=3e-3, run=run, out=out, warmup=5,
                            validate=False)
    assert len(more) == 3  # resumed from step 40
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    assert not [p for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")]
    net = ControlNetModel.from_pretrained(out)
    assert tuple(net.config.conditioning_embedding_out_channels) == (16, 32, 64)
    assert net.controlnet_cond_embedding(torch.zeros(1, 3, 64, 64)).shape[-2:] == (16, 16)
    pipe = controlnet.load_base(base, torch.device("cpu"))
    held_out = controlnet.Validation(control_type, pipe, DDPMScheduler.from_config(pipe.scheduler.config))
    assert held_out(net.eval()) < 0.93 * held_out.base  # the exported EMA weights beat the base on new scenes


@pytest.fixture(scope="module")
def canny_export(base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("canny")
    controlnet.train("canny", 10, base, batch_size=4, lr=1e-3, run=folder / "run", out=folder / "export", warmup=2,
                     validate=False)
    return folder / "export"


def test_the_export_serves_the_engine_and_scale_zero_is_the_base_model(base, canny_export):
    _, maps, _, _ = controlnet.control_batch("canny", 1, 1)
    engine = Engine()

    def generate(scale=None):
        controls = () if scale is None else (ControlSpec(Image.fromarray(maps[0]), "canny", str(canny_export), scale),)
        result = engine.generate(Request(model=str(base), prompt="a large red circle on the left", steps=3,
                                         num_images=2, seed=4, controls=controls))
        return np.stack([np.asarray(image, np.int64) for image in result.images])  # (2, 64, 64, 3)

    plain = generate()
    assert np.abs(generate(0.0) - plain).max() == 0
    assert np.abs(generate(1.0) - plain).max() > 0


def test_eval_scores_every_column(base, canny_export):
    row = eval_control.run(Engine(), "canny", str(canny_export), model=str(base), n=4, control_scale=1.0,
                           per_condition=2, steps=2, cfg=5.0)
    assert row["n"] == 4 and row["pose_hit"] is None
    assert all(0 <= row[c] <= 1 for c in ("edge_f1", "precision", "recall", "colour"))


def test_cli_trains_one_type_and_refuses_shared_folders_for_all(base, tmp_path, capsys):
    controlnet.main(["pose", "--steps", "2", "--batch-size", "2", "--base", str(base), "--run",
                     str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "config.json").is_file()
    assert '"control_type": "pose"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        controlnet.main(["all", "--steps", "2", "--run", str(tmp_path / "run")])
