"""SD3 (MM-DiT, flow matching) through the one loop: pixel equality with StableDiffusion3Pipeline with and without
T5 and with its PAG pipeline, guidance in the velocity space with the right x0, and every guidance method."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3PAGPipeline, StableDiffusion3Pipeline
from diffusers.guiders.adaptive_projected_guidance import normalized_guidance
from PIL import Image

from engine.cli import main
from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import GuidanceSettings, method_names
from engine.guiders.perturb import layer_ids
from engine.pnginfo import parse_parameters
from engine.request import ControlSpec, Request, command_for
from engine.sampler import Step
from engine.models.schedulers import FLOW_SCHEDULERS, make_scheduler
from engine.spaces import velocity_from_x0, x0_from_velocity
from tests.engine.test_exactness import TOLERANCE, control_image, level_diff
from tests.tiny_models import save_sd3


@pytest.fixture(scope="module")
def sd3_folders(tmp_path_factory):
    """The tiny SD3 with T5 and without (its model_index.json lists T5 as absent, as hub folders list optional
    parts; the loader passes such parts as None)."""
    return save_sd3(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def engine():
    return Engine()


def pipeline(folder, t5: bool = True, cls=StableDiffusion3Pipeline, **kw):
    extra = {} if t5 else dict(text_encoder_3=None, tokenizer_3=None)
    pipe = cls.from_pretrained(folder, **extra, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def expected(pipe, scheduler="flow-euler", scale=6.0, seed=3, steps=4, **kw):
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    return pipe("a red circle", negative_prompt="blue square", num_inference_steps=steps, guidance_scale=scale,
                generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images[0]


def request(folders, folder="sd3", **kw):
    args = dict(model=str(folders[folder]), prompt="a red circle", negative_prompt="blue square", steps=4, seed=3,
                scheduler="flow-euler", guidance=GuidanceSettings("cfg", 6.0))
    return Request(**{**args, **kw})


@pytest.mark.parametrize("scheduler", list(FLOW_SCHEDULERS))
def test_text_matches_sd3_pipeline(engine, sd3_folders, scheduler):
    want = expected(pipeline(sd3_folders["sd3"]), scheduler)
    result = engine.generate(request(sd3_folders, scheduler=scheduler))
    assert np.asarray(result.images[0]).shape == want.shape
    assert level_diff(result.images[0], want) <= TOLERANCE


def test_without_t5_matches_the_pipeline_without_it(engine, sd3_folders):
    """--no-t5 on a folder with T5, and a folder that has none, both equal the pipeline loaded without T5."""
    want = expected(pipeline(sd3_folders["sd3"], t5=False))
    dropped = engine.generate(request(sd3_folders, t5=False)).images[0]
    assert level_diff(dropped, want) <= TOLERANCE
    with_t5 = engine.generate(request(sd3_folders)).images[0]
    assert level_diff(dropped, with_t5) > 2 * TOLERANCE  # T5's tokens reached the transformer
    absent = engine.generate(request(sd3_folders, folder="sd3-no-t5")).images[0]
    assert level_diff(absent, expected(pipeline(sd3_folders["sd3-no-t5"], t5=False))) <= TOLERANCE


def test_command_line_defaults_to_a_flow_scheduler_and_writes_the_t5_choice(sd3_folders, tmp_path):
    want = expected(pipeline(sd3_folders["sd3"], t5=False), steps=3, seed=4)
    out = tmp_path / "sd3.png"
    assert main(["generate", "--model", str(sd3_folders["sd3"]), "--prompt", "a red circle", "--negative-prompt",
                 "blue square", "--scale", "6", "--steps", "3", "--seed", "4", "--no-t5", "--out", str(out)]) == 0
    image = Image.open(out)
    assert level_diff(image, want) <= TOLERANCE
    params = parse_parameters(image.info["parameters"])
    assert params["Sampler"] == "Euler (flow)" and params["T5"] == "False"
    command = command_for(request(sd3_folders, t5=False))
    assert "--scheduler flow-euler" in command and "--no-t5" in command


@pytest.mark.parametrize("scheduler", list(FLOW_SCHEDULERS))
def test_batched_seeds_equal_single_runs(engine, sd3_folders, scheduler):
    req = request(sd3_folders, seed=10, num_images=3, steps=3, scheduler=scheduler)
    batch = engine.generate(req)
    for seed, image in zip(batch.seeds, batch.images):
        single = engine.generate(replace(req, seed=seed, num_images=1))
        assert level_diff(image, single.images[0]) <= TOLERANCE


@pytest.mark.parametrize("layers, scale", [("blocks.1", 6.0), ("blocks.0", 1.0)])
def test_pag_matches_the_sd3_pag_pipeline(engine, sd3_folders, layers, scale):
    pipe = pipeline(sd3_folders["sd3"], cls=StableDiffusion3PAGPipeline, pag_applied_layers=layer_ids(layers))
    want = expected(pipe, scale=scale, pag_scale=2.5)
    guidance = GuidanceSettings("pag", scale, pag_scale=2.5, pag_layers=layers)
    result = engine.generate(request(sd3_folders, guidance=guidance)).images[0]
    assert level_diff(result, want) <= TOLERANCE
    plain = engine.generate(request(sd3_folders, guidance=GuidanceSettings("cfg", scale))).images[0]
    assert level_diff(result, plain) > 2 * TOLERANCE


def test_seg_on_joint_attention(engine, sd3_folders):
    cfg = engine.generate(request(sd3_folders)).images[0]
    off = engine.generate(request(sd3_folders, guidance=GuidanceSettings("seg", 6.0, seg_scale=0.0,
                                                                         seg_layers="blocks.0"))).images[0]
    assert level_diff(off, cfg) == 0
    on = engine.generate(request(sd3_folders, guidance=GuidanceSettings("seg", 6.0, seg_scale=10.0,
                                                                        seg_layers="blocks.0,blocks.1"))).images[0]
    assert level_diff(on, cfg) > 2 * TOLERANCE


LAYERS = {"pag": {"pag_layers": "blocks.1"}, "seg": {"seg_layers": "blocks.0"}}


@pytest.mark.parametrize("method", method_names())
def test_every_guidance_method_runs_on_sd3(engine, sd3_folders, method):
    req = request(sd3_folders, steps=2, num_images=2, guidance=GuidanceSettings(method, 4.0, **LAYERS.get(method, {})))
    if method == "autoguidance":
        with pytest.raises(EngineError, match="^AutoGuidance needs a weak version of the model; SD3 models have"):
            engine.generate(req)
        return
    pixels = np.stack([np.asarray(im) for im in engine.generate(req).images]).astype(float)
    assert np.isfinite(pixels).all() and pixels.std() > 0


def test_x0_space_methods_guide_the_flow_models_x0():
    """On a flow step, x0 = x - sigma v; APG works on that x0 and hands back the velocity that has the guided x0."""
    c, u, x = torch.randn(3, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor(0.7)
    step = Step(1, 4, torch.tensor(700.0), torch.tensor(0.15), sigma)
    got = GuidanceSettings("apg", 5.0, eta=0.2).build().combine(c, u, x, step)
    x0 = normalized_guidance(x - sigma * c, x - sigma * u, 4.0, None, 0.2, 0.0, use_original_formulation=True)
    torch.testing.assert_close(got, (x - x0) / sigma)
    torch.testing.assert_close(x0_from_velocity(velocity_from_x0(x0, x, sigma), x, sigma), x0)
    # CFG is linear, so it is the same in velocity and in x0 space
    torch.testing.assert_close(GuidanceSettings("cfg", 5.0).build().combine(c, u, x, step), u + 5.0 * (c - u))


def test_cfg_zero_star_holds_the_first_step_still(engine, sd3_folders):
    """Zero-init on a flow model is a zero velocity: the first step leaves the noise as it is."""
    states = []
    req = request(sd3_folders, steps=3, guidance=GuidanceSettings("cfg-zero-star", 4.0, zero_init_steps=1))
    engine.generate(req, callback=lambda info: states.append(info["x"].clone()))
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(states[0], noise)
    assert not torch.equal(states[1], states[0])


@pytest.mark.parametrize("kw, fragment", [
    (dict(folder="sd3-no-t5", t5=True), "^This SD3 model has no T5 text encoder; leave T5 unset or drop it"),
    (dict(scheduler="ddim"), r"^This model needs a flow-matching scheduler; 'ddim' is not one: choose one of "
                             r"flow-euler, flow-heun\.$"),
    (dict(original_size=(64, 64)), r"^Size and crop conditioning \(--original-size\) needs an SDXL model; this "
                                   r"model is an SD3 model\.$"),
    (dict(controls=(ControlSpec(control_image(), "canny"),)), "^ControlNet is not offered for SD3 models here"),
    (dict(guidance=GuidanceSettings("cfg", 4.0, classifier_scale=1.0), class_label="square"),
     "^Classifier guidance needs a model whose classifier reads its latents"),
])
def test_what_sd3_cannot_take_is_one_sentence(engine, sd3_folders, kw, fragment):
    with pytest.raises(EngineError, match=fragment):
        engine.generate(request(sd3_folders, **kw))


def test_t5_choice_on_another_model_is_one_sentence(engine, tiny_folders, sd3_folders):
    with pytest.raises(EngineError, match=r"^The T5 choice \(--t5, --no-t5\) belongs to SD3 models; this model is an "
                                          r"SD 1.x model\.$"):
        engine.generate(Request(model=str(tiny_folders["sd"]), prompt="x", steps=2, t5=False))
