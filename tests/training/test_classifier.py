"""The noise-aware classifier recipe: the same losses as before the shared loop, resumed runs, stages, exports of
any width, and the command line with its accuracy table."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.models.classifier import NoiseAwareClassifier
from training import classifier, latents
from training.common import MODELS, RUNS
from training.loop import Schedule
from training.noise_accuracy import NOISE_LEVELS, accuracy_by_noise
from world import SHAPES

from .conftest import longer

# Per-step losses of this size recorded from the recipe before it shared the loop (commit efbf04a).
LOSSES = [1.869318962097168, 1.9476929903030396, 1.682314395904541]


@pytest.fixture(scope="module")
def trained(vae_folder, pool_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    config = classifier.ClassifierConfig(schedule=Schedule(steps=3, batch_size=8, lr=2e-3, warmup=1),
                                         pool=pool_folder, vae=vae_folder, channels=(16, 32), run=root / "run",
                                         out=root / "clf")
    return config, classifier.train(config)


def test_classifier_trains_as_before_resumes_and_exports_its_widths(trained):
    config, losses = trained
    assert losses == pytest.approx(LOSSES, rel=1e-5)
    model = NoiseAwareClassifier.from_pretrained(config.out, use_safetensors=True)
    assert model.class_names == list(SHAPES) and tuple(model.config.block_out_channels) == (16, 32)
    assert model.head.in_features == 32 and model(torch.zeros(2, 4, 16, 16), 500).shape == (2, len(SHAPES))
    more = classifier.train(longer(config, 5))
    assert len(more) == 2  # resumed from step 3


def test_a_stage_starts_from_its_init_runs_averaged_weights(trained, tmp_path):
    config, _ = trained
    classifier.train(replace(config, schedule=Schedule(steps=1, batch_size=8, lr=0.0, warmup=0), init=config.run,
                             run=tmp_path / "run", out=tmp_path / "out"))
    init = load_file(str(config.run / "checkpoint.safetensors"))
    stage = load_file(str(tmp_path / "run" / "checkpoint.safetensors"))
    weights = [k for k in stage if k.startswith("classifier.") and stage[k].dtype.is_floating_point]
    assert weights and all(torch.equal(stage[k], init[f"ema.{k}"]) for k in weights)  # lr 0: the init's EMA
    assert all(torch.equal(stage[f"ema.{k}"], init[f"ema.{k}"]) for k in weights)  # so is the average


def test_the_command_line_trains_and_prints_the_accuracy_table(vae_folder, pool_folder, tmp_path, capsys):
    classifier.main(["--steps", "1", "--batch-size", "4", "--channels", "8", "16", "--pool", str(pool_folder),
                     "--vae", str(vae_folder), "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                     "--eval-n", "4"])
    out = capsys.readouterr().out
    assert "classifier accuracy by timestep (chance = 1/6)" in out and '"seconds"' in out
    assert NoiseAwareClassifier.from_pretrained(tmp_path / "out").config.block_out_channels == [8, 16]


def test_the_command_line_defaults_are_the_configs(monkeypatch):
    called = []
    monkeypatch.setattr(classifier, "train", called.append)
    classifier.main(["--eval-n", "0"])
    assert called == [classifier.ClassifierConfig()]
    assert called[0].schedule == Schedule(steps=4500, batch_size=128, lr=2e-3, warmup=200)
    assert (called[0].channels, called[0].run, called[0].out, called[0].vae, called[0].pool_size) == (
        (64, 128, 256), RUNS / "classifier", MODELS / "lab-classifier", RUNS / "vae-final", 30_000)


@pytest.fixture(scope="module")
def separable(pool_folder, tmp_path_factory):
    """The pool's scenes with latents that are a fixed random pattern per shape: a 4-step VAE's latents say too
    little about shape for a few dozen steps, this signal any working classifier recipe learns."""
    data = latents.load(pool_folder)
    patterns = torch.randn(len(SHAPES) + 1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = [SHAPES.index(s.objects[0].shape) if len(s.objects) == 1 else len(SHAPES) for s in data.scenes]
    mean = (patterns[ids] / data.scaling).half()  # (N, 4, 16, 16): unit-variance latents once scaled
    folder = tmp_path_factory.mktemp("separable")
    save_file({"mean": mean, "std": torch.full_like(mean, 0.05)}, str(folder / "latents.safetensors"))
    shutil.copy(pool_folder / "scenes.json", folder / "scenes.json")
    return folder


@pytest.mark.slow
def test_classifier_learns_separable_latents(vae_folder, separable, tmp_path):
    schedule = Schedule(steps=40, batch_size=32, lr=2e-3, warmup=5)
    losses = classifier.train(classifier.ClassifierConfig(schedule=schedule, pool=separable, vae=vae_folder,
                                                          run=tmp_path / "run", out=tmp_path / "clf"))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    model = NoiseAwareClassifier.from_pretrained(tmp_path / "clf", use_safetensors=True)
    data = latents.load(separable)
    index, labels = latents.shape_labels(data)
    accuracy = accuracy_by_noise(model, data.mean[index].float() * data.scaling, torch.from_numpy(labels))
    assert list(accuracy) == list(NOISE_LEVELS)
    assert accuracy[0] >= 0.9 and accuracy[0] >= accuracy[999]  # labels line up with the latents

