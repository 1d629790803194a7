"""The ControlNet recipe on an untrained lab-shaped base: the same losses as before the shared loop, a fresh net that
adds exact zeros, resumed runs, exports the engine serves, and the command line."""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, DDPMScheduler
from PIL import Image

from engine.generate import Engine
from engine.request import ControlSpec, Request
from training import controlnet
from training.common import MODELS
from training.control_data import TYPES, control_batch, to_control
from training.loop import Schedule

from .conftest import longer

# Per-step losses of this size recorded from the recipe before it shared the loop (commit efbf04a).
LOSSES = {"canny": [1.026500940322876, 0.6111458539962769, 1.0454823970794678],
          "scribble": [1.0659849643707275, 1.0604972839355469, 0.5096767544746399],
          "pose": [1.0326167345046997, 1.0493593215942383, 1.1013859510421753]}


def test_conditioning_embedding_downsamples_images_to_latents():
    assert controlnet.embedding_channels(64, 16) == (16, 32, 64)
    assert controlnet.embedding_channels(32, 16) == (16, 32)
    with pytest.raises(ValueError, match="power-of-two"):
        controlnet.embedding_channels(48, 16)


def test_a_fresh_controlnet_adds_exact_zeros(lab_sd_folder):
    pipe = controlnet.load_base(lab_sd_folder, torch.device("cpu"))
    net = controlnet.new_controlnet(pipe)
    _, maps, captions, _ = control_batch("canny", 0, 2)
    latents = torch.randn(2, 4, 16, 16)
    embeds = pipe.text_encoder(pipe.tokenizer(captions, padding="max_length", return_tensors="pt").input_ids)[0]
    down, mid = net(latents, torch.tensor([500, 500]), encoder_hidden_states=embeds,
                    controlnet_cond=to_control(maps), return_dict=False)
    assert all(d.abs().max() == 0 for d in down) and mid.abs().max() == 0
    assert not any(p.requires_grad for p in pipe.unet.parameters())


@pytest.mark.parametrize("control_type", TYPES)
def test_controlnet_trains_as_before(lab_sd_folder, tmp_path, control_type):
    config = controlnet.ControlNetConfig(control_type, Schedule(steps=3, batch_size=2, lr=3e-3, warmup=1),
                                         base=lab_sd_folder, run=tmp_path / "run", out=tmp_path / "export",
                                         validate=False)
    assert controlnet.train(config) == pytest.approx(LOSSES[control_type], rel=1e-5)


def test_a_run_resumes_and_exports_safetensors_only(lab_sd_folder, tmp_path):
    config = controlnet.ControlNetConfig("scribble", Schedule(steps=2, batch_size=2, lr=2e-3, warmup=1),
                                         base=lab_sd_folder, run=tmp_path / "run", out=tmp_path / "export",
                                         validate=False)
    controlnet.train(config)
    assert len(controlnet.train(longer(config, 3))) == 1  # resumed
    assert (config.out / "diffusion_pytorch_model.safetensors").is_file()
    assert not [p for p in config.out.iterdir() if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")]
    net = ControlNetModel.from_pretrained(config.out)
    assert tuple(net.config.conditioning_embedding_out_channels) == (16, 32, 64)
    assert net.controlnet_cond_embedding(torch.zeros(1, 3, 64, 64)).shape[-2:] == (16, 16)


def test_the_export_serves_the_engine_and_scale_zero_is_the_base_model(lab_sd_folder, tmp_path):
    controlnet.train(controlnet.ControlNetConfig("canny", Schedule(steps=3, batch_size=2, lr=3e-2, warmup=1),
                                                 base=lab_sd_folder, run=tmp_path / "run", out=tmp_path / "export",
                                                 validate=False))
    _, maps, _, _ = control_batch("canny", 1, 1)
    engine = Engine()

    def generate(scale=None):
        controls = () if scale is None else (ControlSpec(Image.fromarray(maps[0]), "canny", str(tmp_path / "export"),
                                                         scale),)
        result = engine.generate(Request(model=str(lab_sd_folder), prompt="a large red circle on the left", steps=3,
                                         num_images=2, seed=4, controls=controls))
        return np.stack([np.asarray(image, np.int64) for image in result.images])  # (2, 64, 64, 3)

    plain = generate()
    assert np.abs(generate(0.0) - plain).max() == 0
    assert np.abs(generate(1.0) - plain).max() > 0


def test_the_command_line_trains_one_type_and_refuses_shared_folders_for_all(lab_sd_folder, tmp_path, capsys,
                                                                             monkeypatch):
    controlnet.main(["pose", "--steps", "1", "--batch-size", "2", "--base", str(lab_sd_folder), "--run",
                     str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "config.json").is_file()
    out = capsys.readouterr().out
    assert '"control_type": "pose"' in out and "[validation] step 1 base" in out  # validated at its checkpoint
    with pytest.raises(SystemExit):
        controlnet.main(["all", "--steps", "2", "--run", str(tmp_path / "run")])
    called = []
    monkeypatch.setattr(controlnet, "train", called.append)
    controlnet.main(["all"])
    assert called == [controlnet.ControlNetConfig(t) for t in TYPES]
    assert called[0].schedule == Schedule(steps=1600, batch_size=16, lr=2e-3, warmup=100)
    assert (called[0].base, called[0].run, called[0].out) == (MODELS / "lab-sd", None, None)
    with pytest.raises(ValueError, match="Unknown control type 'depth'"):
        controlnet.ControlNetConfig("depth")


@pytest.mark.slow
@pytest.mark.parametrize("control_type", TYPES)
def test_controlnet_loss_falls_and_beats_the_base_on_new_scenes(lab_sd_folder, tmp_path, control_type):
    out = tmp_path / "export"
    schedule = Schedule(steps=40, batch_size=8, lr=3e-3, warmup=5)
    losses = controlnet.train(controlnet.ControlNetConfig(control_type, schedule, base=lab_sd_folder,
                                                          run=tmp_path / "run", out=out, validate=False))
    assert np.mean(losses[-10:]) < 0.95 * np.mean(losses[:10])
    pipe = controlnet.load_base(lab_sd_folder, torch.device("cpu"))
    held_out = controlnet.Validation(control_type, pipe, DDPMScheduler.from_config(pipe.scheduler.config))
    assert held_out(ControlNetModel.from_pretrained(out).eval()) < 0.93 * held_out.base
