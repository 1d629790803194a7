"""The shipped DiT, noise-aware classifier and ControlNets load with diffusers and, by their registry names, in the
engine; the command line uses them by default."""

import numpy as np
import torch
from diffusers import ControlNetModel, DiTPipeline
from PIL import Image

from engine.models.classifier import NoiseAwareClassifier
from engine.cli import main
from engine.control.maps import canny
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.pnginfo import parse_parameters
from engine.models.registry import REGISTRY
from engine.request import ControlSpec, Request
from world import SHAPES, render_seed


def test_lab_dit_loads_with_diffusers_and_matches_the_engine_at_scale_one():
    pipe = DiTPipeline.from_pretrained(REGISTRY["lab-dit"].source)
    pipe.set_progress_bar_config(disable=True)
    assert sorted(pipe.labels, key=pipe.labels.get) == list(SHAPES)
    expected = pipe([pipe.labels["star"]], num_inference_steps=5, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    result = Engine().generate(Request(prompt="", class_label="star", steps=5, seed=0,
                                       guidance=GuidanceSettings("cfg", 1.0)))
    got = np.asarray(result.images[0]).astype(int)
    assert np.abs(got - np.round(expected * 255).astype(int)).max() <= 1
    assert "Model: lab-dit" in result.parameters[0]


def test_lab_classifier_loads_and_knows_the_shapes():
    classifier = NoiseAwareClassifier.from_pretrained(REGISTRY["lab-classifier"].source)
    assert classifier.class_names == list(SHAPES)
    logits = classifier(torch.zeros(2, 4, 16, 16), torch.tensor([10, 900]))
    assert logits.shape == (2, len(SHAPES)) and torch.isfinite(logits).all()


def test_lab_controlnets_load_and_scale_zero_is_the_base_image():
    image = canny(render_seed(3).image)
    for control_type in ("canny", "scribble", "pose"):
        controlnet = ControlNetModel.from_pretrained(REGISTRY[f"lab-controlnet-{control_type}"].source)
        assert tuple(controlnet.config.conditioning_embedding_out_channels) == (16, 32, 64)
    engine = Engine()
    plain = engine.generate(Request(prompt="a large red circle on the left", steps=4, seed=1)).images[0]
    off = engine.generate(Request(prompt="a large red circle on the left", steps=4, seed=1,
                                  controls=[ControlSpec(Image.fromarray(image), "canny", scale=0.0)])).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(off))


def test_cli_uses_the_shipped_class_classifier_and_control_models(tmp_path):
    assert main(["generate", "--class", "heart", "--classifier-scale", "2", "--steps", "4",
                 "--out", str(tmp_path / "c.png")]) == 0
    params = parse_parameters(Image.open(tmp_path / "c.png").info["parameters"])
    assert params["Model"] == "lab-dit" and params["Class"] == "heart" and params["Classifier scale"] == "2"
    Image.fromarray(canny(render_seed(5).image)).save(tmp_path / "edges.png")
    assert main(["generate", "--prompt", "a large blue square", "--control", str(tmp_path / "edges.png"),
                 "--control-type", "canny", "--steps", "4", "--out", str(tmp_path / "k.png")]) == 0
    params = parse_parameters(Image.open(tmp_path / "k.png").info["parameters"])
    assert params["ControlNet"] == "canny lab-controlnet-canny"
