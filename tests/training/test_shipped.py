"""The shipped lab-sd folder loads with diffusers and, by its registry name, in the engine."""

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from engine.cli import main
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.models.registry import REGISTRY
from engine.request import Request


def test_lab_sd_loads_with_diffusers_and_matches_the_engine():
    pipe = StableDiffusionPipeline.from_pretrained(REGISTRY["lab-sd"].source)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a large red circle on the left", num_inference_steps=5, guidance_scale=5.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    result = Engine().generate(Request(prompt="a large red circle on the left", steps=5, seed=0,
                                       guidance=GuidanceSettings("cfg", 5.0)))
    got = np.asarray(result.images[0]).astype(int)
    assert np.abs(got - np.round(expected * 255).astype(int)).max() <= 1
    assert "Model: lab-sd" in result.parameters[0]


def test_cli_without_model_uses_lab_sd(tmp_path):
    assert main(["generate", "--prompt", "a large red circle on the left", "--steps", "5",
                 "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()
