"""The VAE recipe and its decoder fine-tune: the same losses as before the shared loop, exports with their metrics,
a frozen encoder that stays bit-identical, resumed runs, and the command line's defaults."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from training import vae
from training.common import RUNS
from training.loop import Schedule

from .conftest import longer

# Per-step losses of these sizes recorded from the recipe before it shared the loop (commit efbf04a).
VAE_LOSSES = [0.9481061100959778, 0.8912950754165649, 0.5678999423980713, 0.9666862487792969]
DECODER_LOSSES = [1.7082723379135132, 0.9842889308929443, 1.6105499267578125]


def test_vae_trains_as_before_and_exports_its_metrics(vae_run):
    folder, losses = vae_run
    assert losses == pytest.approx(VAE_LOSSES, rel=1e-5)
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["scaling_factor"] == AutoencoderKL.from_pretrained(
        folder).config.scaling_factor > 0


def test_decoder_finetune_trains_as_before_keeps_the_encoder_and_resumes(vae_folder, tmp_path):
    config = vae.DecoderConfig(vae_folder, schedule=Schedule(steps=3, batch_size=2, lr=5e-4, warmup=1), measure_n=8,
                               run=tmp_path / "run", out=tmp_path / "tuned")
    _, losses = vae.finetune_decoder(config)
    assert losses == pytest.approx(DECODER_LOSSES, rel=1e-5)
    old = AutoencoderKL.from_pretrained(vae_folder).state_dict()
    new = AutoencoderKL.from_pretrained(tmp_path / "tuned").state_dict()
    frozen = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(old[k], new[k]) for k in frozen)  # every latent stays what it was
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    metrics = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert 0.0 <= metrics["shape_fidelity"]["accuracy"] <= 1.0 and metrics["decoder_steps"] == 3
    _, more = vae.finetune_decoder(longer(config, 4))
    assert len(more) == 1  # resumed from step 3


def test_the_command_line_builds_the_configs_with_their_defaults(monkeypatch, tmp_path):
    called = []
    monkeypatch.setattr(vae, "train", called.append)
    monkeypatch.setattr(vae, "finetune_decoder", called.append)
    vae.main([])
    vae.main(["--decoder-from", str(tmp_path), "--steps", "5", "--edge-weight", "0.5"])
    assert called == [vae.VaeConfig(), longer(vae.DecoderConfig(tmp_path), 5, edge_weight=0.5)]
    assert called[0].schedule == Schedule(steps=3000, batch_size=32, lr=2e-3, warmup=200)
    assert (called[0].full_res_steps, called[0].measure_n, called[0].run, called[0].out) == (
        400, 256, RUNS / "vae", RUNS / "vae-final")
    assert called[1].schedule == Schedule(steps=5, batch_size=16, lr=5e-4, warmup=100)
    assert (called[1].run, called[1].out) == (RUNS / "vae-decoder", RUNS / "vae-decoder-final")


@pytest.mark.slow
def test_a_short_real_run_learns_to_reconstruct_and_resumes(tmp_path):
    """The shipped recipe at half the batch for 80 steps, measured as `--measure` measures a VAE (on fewer scenes):
    its PSNR against the untrained VAE's, and its shape fidelity."""
    config = vae.VaeConfig(schedule=Schedule(steps=80, batch_size=16, lr=2e-3, warmup=10), full_res_steps=10,
                           measure_n=64, run=tmp_path / "run", out=tmp_path / "vae")
    trained, losses = vae.train(config)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    torch.manual_seed(0)
    untrained = AutoencoderKL(**vae.CONFIG).eval()
    assert vae.psnr(trained, 64) > vae.psnr(untrained, 64) + 1.5
    assert 0 <= vae.shape_fidelity(trained, 48)["accuracy"] <= 1  # 80 steps draw shapes too blurred to name yet
    _, more = vae.train(longer(config, 82))
    assert len(more) == 2  # resumed from step 80


@pytest.mark.slow
def test_decoder_loss_falls(vae_folder, tmp_path):
    schedule = Schedule(steps=30, batch_size=4, lr=2e-3, warmup=3)
    _, losses = vae.finetune_decoder(vae.DecoderConfig(vae_folder, schedule=schedule, measure_n=16,
                                                       run=tmp_path / "run", out=tmp_path / "tuned"))
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
