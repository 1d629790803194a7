"""The text-to-image recipe's options for a weak model (AutoGuidance): a smaller UNet trained alone on another
model's frozen text encoder, exported as a UNet folder."""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from training import text2img
from training.common import MODELS
from training.loop import Schedule

LAB_SD = MODELS / "lab-sd"


@pytest.fixture(scope="module")
def weak(vae_folder, pool_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("weak")
    config = text2img.Text2ImgConfig(schedule=Schedule(steps=2, batch_size=4, lr=1e-3, warmup=1), vae=vae_folder,
                                     pool=pool_folder, run=root / "run", out=root / "unet",
                                     block_out_channels=(16, 32, 32), attn16=True, text_encoder_from=LAB_SD,
                                     export_unet_only=True)
    return config, text2img.train(config)


def test_a_weak_unet_trains_alone_on_the_frozen_text_encoder_and_exports_as_a_unet_folder(weak):
    config, losses = weak
    assert len(losses) == 2 and all(l == l for l in losses)  # finite
    assert sorted(p.name for p in config.out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    saved = json.loads((config.out / "config.json").read_text())
    assert saved["block_out_channels"] == [16, 32, 32] and saved["cross_attention_dim"] == 64
    assert saved["down_block_types"] == ["CrossAttnDownBlock2D"] * 3
    checkpoint = load_file(str(config.run / "checkpoint.safetensors"))
    assert checkpoint and not any(k.startswith(("text_encoder.", "ema.text_encoder.")) for k in checkpoint)
    # The checkpoint's layout is read back from it, and it reads lab-sd's prompt embeddings.
    assert text2img.unet_config(False, config.run)["block_out_channels"] == (16, 32, 32)
    assert text2img.unet_config(False, config.run)["down_block_types"] == ("CrossAttnDownBlock2D",) * 3
    unet = UNet2DConditionModel.from_pretrained(config.out).eval()
    tokenizer = CLIPTokenizer.from_pretrained(LAB_SD / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(LAB_SD / "text_encoder").eval()
    ids = tokenizer(["a large red circle on the left"], padding="max_length", max_length=text2img.MAX_TOKENS,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        eps = unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), encoder_hidden_states=encoder(ids)[0]).sample
    assert eps.shape == (1, 4, 16, 16)


def test_the_weak_export_from_its_checkpoint_is_the_trained_one(weak, tmp_path):
    config, _ = weak
    text2img.export_from_checkpoint(config.vae, config.run, tmp_path / "again", config.text_encoder_from, True)
    exported = load_file(str(config.out / "diffusion_pytorch_model.safetensors"))
    again = load_file(str(tmp_path / "again" / "diffusion_pytorch_model.safetensors"))
    assert exported.keys() == again.keys() and all(torch.equal(v, again[k]) for k, v in exported.items())


def test_the_weak_options_on_the_command_line(monkeypatch, capsys):
    called = []
    monkeypatch.setattr(text2img, "train", called.append)
    text2img.main(["--block-out-channels", "16,32,32", "--layers-per-block", "2", "--text-encoder-from",
                   "assets/models/lab-sd", "--export-unet-only"])
    config = called[0]
    assert (config.block_out_channels, config.layers_per_block, str(config.text_encoder_from),
            config.export_unet_only) == ((16, 32, 32), 2, "assets/models/lab-sd", True)
    assert text2img.unet_config(config.attn16, None, config.block_out_channels, config.layers_per_block) == {
        **text2img.UNET, "block_out_channels": (16, 32, 32), "layers_per_block": 2}
    assert text2img.unet_config(False, None, (32, 64, 64), 1) is text2img.UNET  # the defaults change nothing
    for bad in ("16,32", "16,24,32", "a,b,c"):
        with pytest.raises(SystemExit):
            text2img.main(["--block-out-channels", bad])
    assert "--block-out-channels" in capsys.readouterr().err
