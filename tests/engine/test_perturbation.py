"""The perturbed branch of PAG, SEG and AutoGuidance: pixel equality with diffusers' PAG pipeline, the defining
properties of the others, and the rows marked for perturbation surviving the batch splitter."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPAGPipeline, UNet2DConditionModel

from engine.models import registry
from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.guiders.autoguidance import autoguidance
from engine.guiders.pag import pag
from engine.guiders.perturb import INFINITE_SIGMA, blur_queries, layer_ids, self_attention_layers
from engine.request import ControlSpec, Request, check_request
from tests.engine.test_exactness import TOLERANCE, control_image, level_diff


@pytest.fixture(scope="module")
def engine():
    return Engine()


def request(folder, guidance, **kw):
    return Request(model=str(folder), prompt="a red circle", negative_prompt="blue square", steps=4, seed=3,
                   guidance=guidance, **kw)


@pytest.mark.parametrize("layers", ["mid", "down.1"])
@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_pag_matches_the_pag_pipeline(engine, tiny_folders, layers, scale):
    pipe = StableDiffusionPAGPipeline.from_pretrained(tiny_folders["sd"], safety_checker=None,
                                                      pag_applied_layers=layer_ids(layers))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red circle", negative_prompt="blue square", num_inference_steps=4, guidance_scale=scale,
                    pag_scale=2.5, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    result = engine.generate(request(tiny_folders["sd"],
                                     GuidanceSettings("pag", scale, pag_scale=2.5, pag_layers=layers)))
    assert level_diff(result.images[0], expected) <= TOLERANCE
    plain = engine.generate(request(tiny_folders["sd"], GuidanceSettings("cfg", scale))).images[0]
    assert level_diff(result.images[0], plain) > 2 * TOLERANCE  # the perturbed branch changed the picture


def test_perturbed_rows_survive_the_batch_split(tiny_folders):
    whole, split = Engine(), Engine()
    split.store.cpu.splitter.min_batch = 2  # cut even a small batch across the cores
    req = replace(request(tiny_folders["sd"], GuidanceSettings("pag", (1.0, 4.0, 6.0), pag_scale=2.0)),
                  num_images=3, image_seeds=(3, 3, 4))
    whole.store.cpu.splitter.enabled = False
    a, b = whole.generate(req).images, split.generate(req).images
    assert max(level_diff(x, y) for x, y in zip(a, b)) <= TOLERANCE


def test_seg_scale_zero_is_cfg_and_its_update_points_away_from_the_blur(engine, tiny_folders):
    cfg = engine.generate(request(tiny_folders["sd"], GuidanceSettings("cfg", 6.0))).images[0]
    off = engine.generate(request(tiny_folders["sd"], GuidanceSettings("seg", 6.0, seg_scale=0.0))).images[0]
    assert level_diff(off, cfg) == 0
    on = engine.generate(request(tiny_folders["sd"], GuidanceSettings("seg", 6.0, seg_scale=10.0,
                                                                      seg_layers="mid,up.0,down.1"))).images[0]
    assert level_diff(on, cfg) > 2 * TOLERANCE
    c, u, p = torch.randn(3, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    update = pag(c, u, p, 6.0, 3.0) - (u + 6.0 * (c - u))
    torch.testing.assert_close(update, 3.0 * (c - p))  # away from p, along c - p


def test_blurred_queries():
    q = torch.randn(2, 16, 5, generator=torch.Generator().manual_seed(0))  # a 4x4 token grid
    mean = blur_queries(q.clone(), INFINITE_SIGMA)
    torch.testing.assert_close(mean, q.mean(dim=1, keepdim=True).expand_as(q))  # the paper's infinite limit
    torch.testing.assert_close(blur_queries(q.clone(), 0.01), q)  # a 1-token kernel changes nothing
    soft = blur_queries(q.clone(), 1.0)
    assert (soft - mean).norm() < (q - mean).norm()  # a finite blur lies between the two


def test_autoguidance_with_a_weak_model(engine, tiny_folders, tmp_path, monkeypatch):
    torch.manual_seed(1)
    strong = UNet2DConditionModel.from_pretrained(tiny_folders["sd"] / "unet")
    weak = UNet2DConditionModel.from_config(strong.config)  # same conditioning, untrained: a bad version
    weak.save_pretrained(tmp_path / "weak")
    spec = registry.ModelSpec("tiny-sd", str(tiny_folders["sd"]), "text", weak="tiny-weak")
    monkeypatch.setitem(registry.REGISTRY, "tiny-sd", spec)
    monkeypatch.setitem(registry.REGISTRY, "tiny-weak", registry.ModelSpec("tiny-weak", str(tmp_path / "weak"), "unet"))
    req = replace(request("tiny-sd", GuidanceSettings("autoguidance", 1.0)), negative_prompt="")
    at_one = engine.generate(req).images[0]
    plain = engine.generate(replace(req, guidance=GuidanceSettings("none", 1.0))).images[0]
    assert level_diff(at_one, plain) == 0  # s = 1: c alone, the weak model not even run
    guided = engine.generate(replace(req, guidance=GuidanceSettings("autoguidance", 3.0))).images[0]
    assert level_diff(guided, plain) > 2 * TOLERANCE
    c, p = torch.randn(2, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(autoguidance(c, p, 3.0) - c, 2.0 * (c - p))  # beyond c, away from the weak model
    assert GuidanceSettings("autoguidance", 3.0).guided is False  # no unconditional branch at all
    with pytest.raises(EngineError, match="weak version"):
        engine.generate(request(tiny_folders["sd"], GuidanceSettings("autoguidance", 3.0)))


def test_what_the_weak_branch_refuses_is_one_sentence(engine, tiny_folders):
    """AutoGuidance's branch refuses, before any model work, what it cannot run; at scale 1 it runs nothing."""
    control = ControlSpec(control_image(), "canny", str(tiny_folders["controlnet"]))
    with pytest.raises(EngineError, match=r"^AutoGuidance does not combine with ControlNet here: the weak model "
                                          r"cannot take the ControlNet's features\.$"):
        engine.generate(request(tiny_folders["sd"], GuidanceSettings("autoguidance", 3.0), controls=(control,)))
    dit = Request(model=str(tiny_folders["dit"]), class_label="square", steps=2, seed=7)
    with pytest.raises(EngineError, match=r"^AutoGuidance needs a weak version of the model; the class-conditional "
                                          r"models have none here\.$"):
        engine.generate(replace(dit, guidance=GuidanceSettings("autoguidance", 3.0)))
    assert engine.generate(replace(dit, guidance=GuidanceSettings("autoguidance", 1.0))).images


@pytest.mark.parametrize("layers, match", [
    ("mid;rm -rf", "written like 'mid'"),
    ("(a+)+$", "written like 'mid'"),
    ("x" * 300, "written like 'mid'"),
])
def test_layer_lists_are_checked_before_any_pattern_runs(tiny_folders, layers, match):
    with pytest.raises(EngineError, match=match):
        check_request(request(tiny_folders["sd"], GuidanceSettings("pag", 5.0, pag_layers=layers)))


def test_an_absent_layer_is_one_sentence(engine, tiny_folders):
    unet = UNet2DConditionModel.from_pretrained(tiny_folders["sd"] / "unet")
    assert self_attention_layers(unet, "mid") == ["mid_block.attentions.0.transformer_blocks.0.attn1"]
    with pytest.raises(EngineError, match="no self-attention layer 'down_blocks.7'; it has"):
        engine.generate(request(tiny_folders["sd"], GuidanceSettings("pag", 5.0, pag_layers="down.7")))
