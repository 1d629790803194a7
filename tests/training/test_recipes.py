"""Few-step smoke runs of the recipes: the loss falls, checkpoints resume, the export loads in the engine."""

import numpy as np

from engine.generate import Engine, Request
from training import text2img, vae


def test_vae_smoke_run_loss_falls_and_resumes(tmp_path):
    model, losses = vae.train(40, batch_size=8, full_res_steps=5, out=tmp_path / "vae", run=tmp_path / "run",
                              warmup=5)
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    _, more = vae.train(45, batch_size=8, full_res_steps=5, out=tmp_path / "vae", run=tmp_path / "run", warmup=5)
    assert len(more) == 5  # resumed from step 40


def test_text2img_smoke_run_loss_falls_and_exports(tmp_path):
    vae.train(5, batch_size=4, full_res_steps=1, out=tmp_path / "vae", run=tmp_path / "vae-run", warmup=2)
    losses = text2img.train(40, tmp_path / "vae", batch_size=8, run=tmp_path / "run", out=tmp_path / "sd",
                            warmup=5, pool=tmp_path / "pool", pool_size=64)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    result = Engine().generate(Request(model=str(tmp_path / "sd"), prompt="a large red circle on the left", steps=3))
    assert result.images[0].size == (64, 64)
