"""The engine reproduces diffusers' pipelines pixel for pixel on tiny seeded models."""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, DiTPipeline, StableDiffusionControlNetPipeline, StableDiffusionPipeline
from PIL import Image

from engine.generate import Engine
from engine.request import ControlSpec, Request
from engine.guiders import GuidanceSettings
from engine.models.schedulers import SCHEDULERS, make_scheduler

TOLERANCE = 1  # pixel levels out of 255


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(scope="module")
def sd(tiny_folders):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_folders["sd"], safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.float64) / 255


def levels(image) -> np.ndarray:
    """Pixel levels 0..255 as integers, from a PIL image or a pipeline's float array in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image).astype(np.int64)
    return np.round(image * 255).astype(np.int64)


def level_diff(a, b) -> int:
    return int(np.abs(levels(a) - levels(b)).max())


def control_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(((rng.random((32, 32, 3)) > 0.8) * 255).astype(np.uint8))


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_text_matches_stable_diffusion_pipeline(engine, sd, tiny_folders, scheduler):
    sd.scheduler = make_scheduler(scheduler, sd.scheduler.config)
    expected = sd("a red circle", negative_prompt="blue square", num_inference_steps=4, guidance_scale=6.0,
                  generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    result = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle",
                                     negative_prompt="blue square", steps=4, scheduler=scheduler, seed=3,
                                     guidance=GuidanceSettings("cfg", 6.0)))
    got = as_float(result.images[0])
    assert got.shape == expected.shape
    assert level_diff(result.images[0], expected) <= TOLERANCE


def test_guidance_rescale_matches_pipeline(engine, sd, tiny_folders):
    sd.scheduler = make_scheduler("ddim", sd.scheduler.config)
    expected = sd("a red circle", num_inference_steps=4, guidance_scale=6.0, guidance_rescale=0.7,
                  generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    result = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=4, seed=5,
                                     guidance=GuidanceSettings("cfg", 6.0, rescale=0.7)))
    assert level_diff(result.images[0], expected) <= TOLERANCE


def test_outputs_are_not_trivial(engine, tiny_folders):
    """Guard for the tests above: seeds, prompts and scales change the image."""
    def image(**kw):
        args = dict(model=str(tiny_folders["sd"]), prompt="a red circle", steps=4, seed=3,
                    guidance=GuidanceSettings("cfg", 6.0))
        return as_float(engine.generate(Request(**{**args, **kw})).images[0])
    base = image()
    assert np.abs(base - image(seed=4)).max() > 0.02
    assert np.abs(base - image(guidance=GuidanceSettings("cfg", 1.0))).max() > 0.002
    assert np.abs(base - image(guidance=GuidanceSettings("perp-cfg", 6.0))).max() > 0.002


@pytest.fixture(scope="module")
def controlnet_pipe(sd, tiny_folders):
    base = {k: v for k, v in sd.components.items() if k != "image_encoder"}
    pipe = StableDiffusionControlNetPipeline(**base, controlnet=ControlNetModel.from_pretrained(
        tiny_folders["controlnet"]))
    pipe.scheduler = make_scheduler("ddim", sd.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("guess_mode", [False, True])
@pytest.mark.parametrize("scale,start,end", [(1.0, 0.0, 1.0), (0.7, 0.25, 0.75)])
def test_controlnet_matches_pipeline(engine, controlnet_pipe, tiny_folders, guess_mode, scale, start, end):
    expected = controlnet_pipe("a red circle", image=control_image(), num_inference_steps=4, guidance_scale=5.0,
                               controlnet_conditioning_scale=scale, control_guidance_start=start,
                               control_guidance_end=end, guess_mode=guess_mode,
                               generator=torch.Generator().manual_seed(1), output_type="np").images[0]
    control = ControlSpec(control_image(), "canny", str(tiny_folders["controlnet"]), scale, start, end)
    result = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", controls=(control,),
                                     guess_mode=guess_mode, steps=4, seed=1, guidance=GuidanceSettings("cfg", 5.0)))
    assert level_diff(result.images[0], expected) <= TOLERANCE


def test_control_scale_zero_is_the_base_model_exactly(engine, tiny_folders):
    base = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=4, seed=2))
    control = ControlSpec(control_image(), "canny", str(tiny_folders["controlnet"]), 0.0)
    zero = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", controls=(control,),
                                   steps=4, seed=2))
    full = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle",
                                   controls=(ControlSpec(control_image(), "canny", str(tiny_folders["controlnet"])),),
                                   steps=4, seed=2))
    assert np.array_equal(np.asarray(base.images[0]), np.asarray(zero.images[0]))
    assert not np.array_equal(np.asarray(base.images[0]), np.asarray(full.images[0]))


def test_two_controlnets_match_multi_controlnet_pipeline(engine, sd, tiny_folders):
    nets = [ControlNetModel.from_pretrained(tiny_folders[k]) for k in ("controlnet", "controlnet2")]
    base = {k: v for k, v in sd.components.items() if k != "image_encoder"}
    pipe = StableDiffusionControlNetPipeline(**base, controlnet=nets)
    pipe.scheduler = make_scheduler("ddim", sd.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = [control_image(), control_image().transpose(Image.FLIP_LEFT_RIGHT)]
    expected = pipe("a red circle", image=images, num_inference_steps=4, guidance_scale=5.0,
                    controlnet_conditioning_scale=[1.0, 0.5], control_guidance_start=[0.0, 0.5],
                    control_guidance_end=[1.0, 1.0], generator=torch.Generator().manual_seed(1),
                    output_type="np").images[0]
    controls = (ControlSpec(images[0], "canny", str(tiny_folders["controlnet"]), 1.0, 0.0, 1.0),
                ControlSpec(images[1], "scribble", str(tiny_folders["controlnet2"]), 0.5, 0.5, 1.0))
    result = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", controls=controls,
                                     steps=4, seed=1, guidance=GuidanceSettings("cfg", 5.0)))
    assert level_diff(result.images[0], expected) <= TOLERANCE


@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("scheduler", ["ddim", "dpm++2m", "unipc"])
def test_class_matches_dit_pipeline(engine, tiny_folders, scale, scheduler):
    dit = DiTPipeline.from_pretrained(tiny_folders["dit"])
    dit.scheduler = make_scheduler(scheduler, dit.scheduler.config)
    dit.set_progress_bar_config(disable=True)
    expected = dit([1], num_inference_steps=5, guidance_scale=scale, generator=torch.Generator().manual_seed(7),
                   output_type="np").images[0]
    result = engine.generate(Request(model=str(tiny_folders["dit"]), class_label="square", steps=5, seed=7,
                                     scheduler=scheduler, guidance=GuidanceSettings("cfg", scale)))
    assert level_diff(result.images[0], expected) <= TOLERANCE


@pytest.mark.parametrize("scheduler", ["ddpm", "euler-a"])
def test_batched_seeds_equal_single_runs(engine, tiny_folders, scheduler):
    """--num-images K gives, for each seed, the image a single run with that seed gives (ancestral noise too)."""
    req = Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=4, seed=10, num_images=3,
                  scheduler=scheduler)
    batch = engine.generate(req)
    assert batch.seeds == [10, 11, 12]
    for seed, image in zip(batch.seeds, batch.images):
        single = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=4, seed=seed,
                                         scheduler=scheduler))
        assert level_diff(image, single.images[0]) <= TOLERANCE


@pytest.mark.parametrize("method", ["cfg", "perp-cfg", "apg"])
def test_per_image_scales_equal_separate_runs(engine, tiny_folders, method):
    """A comparison row runs as one batch: one seed, a scale per image, each equal to its own single run."""
    scales = (1.0, 3.0, 7.5)
    extra = {"momentum": -0.5} if method == "apg" else {}
    row = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=3, num_images=3,
                                  image_seeds=(4, 4, 4), guidance=GuidanceSettings(method, scales, **extra)))
    for scale, image in zip(scales, row.images):
        single = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=3, seed=4,
                                         guidance=GuidanceSettings(method, scale, **extra)))
        assert level_diff(image, single.images[0]) <= TOLERANCE
    assert "CFG scale: 7.5" in row.parameters[2]
