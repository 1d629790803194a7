"""Few-step smoke runs of the recipes: the loss falls, checkpoints resume, the export loads in the engine."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from engine.generate import Engine, Request
from training import text2img, vae


def test_vae_smoke_run_loss_falls_and_resumes(tmp_path):
    model, losses = vae.train(40, batch_size=8, full_res_steps=5, out=tmp_path / "vae", run=tmp_path / "run",
                              warmup=5)
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    _, more = vae.train(45, batch_size=8, full_res_steps=5, out=tmp_path / "vae", run=tmp_path / "run", warmup=5)
    assert len(more) == 5  # resumed from step 40


def test_decoder_finetune_keeps_the_encoder_bit_identical_and_resumes(tmp_path):
    vae.train(5, batch_size=4, full_res_steps=1, out=tmp_path / "vae", run=tmp_path / "vae-run", warmup=2)
    before = AutoencoderKL.from_pretrained(tmp_path / "vae")
    tuned, losses = vae.finetune_decoder(30, tmp_path / "vae", tmp_path / "tuned", tmp_path / "run", batch_size=4,
                                         warmup=3, lr=2e-3, measure_n=16)
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    after = AutoencoderKL.from_pretrained(tmp_path / "tuned")
    old, new = before.state_dict(), after.state_dict()
    frozen = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(old[k], new[k]) for k in frozen)  # every latent stays what it was
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    assert after.config.scaling_factor == before.config.scaling_factor
    metrics = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert 0.0 <= metrics["shape_fidelity"]["accuracy"] <= 1.0 and metrics["decoder_steps"] == 30
    _, more = vae.finetune_decoder(33, tmp_path / "vae", tmp_path / "tuned", tmp_path / "run", batch_size=4,
                                   warmup=3, lr=2e-3, measure_n=16)
    assert len(more) == 3  # resumed from step 30


def test_text2img_smoke_run_loss_falls_and_exports(tmp_path):
    vae.train(5, batch_size=4, full_res_steps=1, out=tmp_path / "vae", run=tmp_path / "vae-run", warmup=2)
    losses = text2img.train(40, tmp_path / "vae", batch_size=8, run=tmp_path / "run", out=tmp_path / "sd",
                            warmup=5, pool=tmp_path / "pool", pool_size=64)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    result = Engine().generate(Request(model=str(tmp_path / "sd"), prompt="a large red circle on the left", steps=3))
    assert result.images[0].size == (64, 64)
    text2img.export_from_checkpoint(tmp_path / "vae", tmp_path / "run", tmp_path / "sd-again")
    assert (tmp_path / "sd-again" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    stage = text2img.train(3, tmp_path / "vae", batch_size=8, run=tmp_path / "stage", out=tmp_path / "sd-stage",
                           warmup=1, pool=tmp_path / "pool", init=tmp_path / "run", two_share=0.9)
    assert len(stage) == 3 and np.mean(stage) < np.mean(losses[:10])  # starts from the trained weights


def test_batches_draw_the_requested_share_of_two_object_scenes():
    one, two = np.arange(0, 60), np.arange(60, 90)
    mixed = text2img.draw(np.random.default_rng(0), (one, two), 4000, 0.75)
    assert abs(np.mean(mixed >= 60) - 0.75) < 0.03 and mixed.min() >= 0 and mixed.max() < 90
    uniform = text2img.draw(np.random.default_rng(0), (one, two), 4000, None)
    assert np.array_equal(uniform, np.random.default_rng(0).integers(90, size=4000))  # the pool's own mix


def test_a_share_outside_zero_to_one_is_refused_with_a_message(capsys):
    with pytest.raises(SystemExit):
        text2img.main(["--two-share", "1.5"])
    assert "--two-share must be between 0 and 1, got 1.5." in capsys.readouterr().err


def test_word_embeddings_start_distinct_and_escape_weight_decay():
    from transformers import CLIPTextModel

    tokenizer = text2img.tokenizer_for(None, None)
    encoder = CLIPTextModel(text2img.text_config(tokenizer))
    words = [tokenizer.convert_tokens_to_ids(w) for w in ("left</w>", "right</w>", "top</w>", "bottom</w>")]
    before = encoder.get_input_embeddings().weight[words]
    text2img.spread_token_embeddings(encoder, 1.0)
    after = encoder.get_input_embeddings().weight[words].detach()
    assert before.norm(dim=-1).max() < 0.5 < 4 < after.norm(dim=-1).min()  # CLIP's 0.02 init against unit scale
    assert (after[0] - after[1]).norm() > 4
    groups = text2img.parameter_groups([encoder], 0.01)
    kept = {id(p) for p in groups[1]["params"]}
    assert groups[1]["weight_decay"] == 0 and id(encoder.get_input_embeddings().weight) in kept
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.01


def test_a_stage_grows_16x16_attention_that_starts_as_the_identity(tmp_path):
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from training.common import EMA, save_checkpoint

    torch.manual_seed(0)
    tokenizer = text2img.tokenizer_for(None, None)

    def modules(config):
        return {"unet": UNet2DConditionModel(**config).eval(), "text_encoder": CLIPTextModel(
            text2img.text_config(tokenizer)).eval()}

    old = modules(text2img.UNET)
    save_checkpoint(tmp_path / "old", 1, old, torch.optim.AdamW(old["unet"].parameters()),
                    {name: EMA(m, 0.999) for name, m in old.items()})
    grown = modules(text2img.UNET_ATTN16)
    assert text2img.start_from(tmp_path / "old", grown) == [
        "unet.down_blocks.0.attentions.0", "unet.up_blocks.2.attentions.0", "unet.up_blocks.2.attentions.1"]
    ids = tokenizer(["a small red star on the left"], padding="max_length", max_length=text2img.MAX_TOKENS,
                    return_tensors="pt").input_ids
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        before, after = (m["unet"](x, t, encoder_hidden_states=m["text_encoder"](ids)[0].expand(2, -1, -1)).sample
                         for m in (old, grown))
    assert before.abs().mean() > 0.01 and torch.equal(before, after)
    save_checkpoint(tmp_path / "grown", 1, grown, torch.optim.AdamW(grown["unet"].parameters()),
                    {name: EMA(m, 0.999) for name, m in grown.items()})
    assert text2img.unet_config(False, tmp_path / "grown") is text2img.UNET_ATTN16  # read from the checkpoint
    assert text2img.unet_config(True, tmp_path / "old") is text2img.UNET
    assert text2img.unet_config(True, tmp_path / "no-run") is text2img.UNET_ATTN16
    with pytest.raises(ValueError, match="does not fit this unet"):
        text2img.start_from(tmp_path / "grown", modules(text2img.UNET))  # weights would be dropped: refused
