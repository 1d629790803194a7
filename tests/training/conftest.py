"""Session fixtures of the recipe tests: a 4-step VAE, a 48-scene pool encoded by it, and an untrained lab-shaped
Stable Diffusion. These are the sizes whose per-step losses the tests compare with numbers recorded from the
recipes as they were before they shared one training loop (commit efbf04a)."""

import shutil
from dataclasses import replace

import pytest

from training import latents, vae
from training.loop import Schedule

from .tiny_lab import TOKENIZER, tiny_lab_sd


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory):
    """(folder, losses) of a VAE trained 4 steps, 2 of them on whole images."""
    root = tmp_path_factory.mktemp("vae")
    _, losses = vae.train(vae.VaeConfig(schedule=Schedule(steps=4, batch_size=4, lr=2e-3, warmup=2), full_res_steps=2,
                                        measure_n=8, run=root / "run", out=root / "vae"))
    return root / "vae", losses


@pytest.fixture(scope="session")
def vae_folder(vae_run):
    return vae_run[0]


@pytest.fixture(scope="session")
def pool_folder(vae_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool") / "pool"
    latents.build(48, vae_folder, folder)
    return folder


@pytest.fixture(scope="session")
def lab_sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny-lab-sd"
    tiny_lab_sd().save_pretrained(folder, safe_serialization=True)
    return folder


def with_lab_tokenizer(run):
    """`run` holding the shipped tokenizer, which text2img reads from there: a tokenizer trained again gives words
    other ids in every process, and so other losses."""
    shutil.copytree(TOKENIZER, run / "tokenizer")
    return run


def longer(config, steps: int, **changes):
    """`config` with its schedule run to `steps` (a resumed run) and `changes`."""
    return replace(config, schedule=replace(config.schedule, steps=steps), **changes)
