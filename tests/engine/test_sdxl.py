"""SDXL through the one loop: pixel equality with StableDiffusionXLPipeline (every scheduler, micro-conditioning set),
its ControlNet and PAG pipelines, the CLI's size and crop flags, and every guidance method."""

import shlex
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import (ControlNetModel, StableDiffusionXLControlNetPipeline, StableDiffusionXLPAGPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from PIL import Image

from engine.models import registry
from engine.cli import build_parser, main
from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import GuidanceSettings, method_names
from engine.guiders.perturb import layer_ids
from engine.pnginfo import parse_parameters
from engine.request import ControlSpec, Request, check_request, command_for
from engine.models.schedulers import SCHEDULERS, make_scheduler
from tests.engine.test_exactness import TOLERANCE, control_image, level_diff
from tests.tiny_models import save_sdxl

# Non-default micro-conditioning, the lab's (width, height) and (x, y), and diffusers' (height, width) and (y, x).
MICRO = dict(original_size=(40, 48), crop_coords=(8, 4), target_size=(24, 32), negative_original_size=(16, 16),
             negative_crop_coords=(2, 6), negative_target_size=(64, 56))
DIFFUSERS_MICRO = dict(original_size=(48, 40), crops_coords_top_left=(4, 8), target_size=(32, 24),
                       negative_original_size=(16, 16), negative_crops_coords_top_left=(6, 2),
                       negative_target_size=(56, 64))
PIPELINE_KINDS = {"StableDiffusionXLPipeline": "text", "StableDiffusionXLControlNetPipeline": "text",
                  "StableDiffusion3Pipeline": "text"}


@pytest.fixture(scope="module")
def sdxl_folders(tmp_path_factory):
    """The tiny SDXL and its ControlNet; the registry taught the SDXL folder kind for this module."""
    with pytest.MonkeyPatch.context() as patch:
        for name, kind in PIPELINE_KINDS.items():
            patch.setitem(registry.PIPELINE_KINDS, name, kind)
        yield save_sdxl(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(scope="module")
def sdxl(sdxl_folders):
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_folders["sdxl"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def request(folders, **kw):
    args = dict(model=str(folders["sdxl"]), prompt="a red circle", negative_prompt="blue square", steps=4, seed=3,
                guidance=GuidanceSettings("cfg", 6.0))
    return Request(**{**args, **kw})


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_text_matches_sdxl_pipeline(engine, sdxl, sdxl_folders, scheduler):
    sdxl.scheduler = make_scheduler(scheduler, sdxl.scheduler.config)
    expected = sdxl("a red circle", negative_prompt="blue square", num_inference_steps=4, guidance_scale=6.0,
                    generator=torch.Generator().manual_seed(3), output_type="np", **DIFFUSERS_MICRO).images[0]
    result = engine.generate(request(sdxl_folders, scheduler=scheduler, **MICRO))
    assert np.asarray(result.images[0]).shape == expected.shape
    assert level_diff(result.images[0], expected) <= TOLERANCE


def test_micro_conditioning_changes_the_image(engine, sdxl_folders):
    """Guard for the equality above: each side's size and crop ids reach the UNet."""
    plain = engine.generate(request(sdxl_folders)).images[0]
    positive = engine.generate(request(sdxl_folders, crop_coords=(8, 4))).images[0]
    negative = engine.generate(request(sdxl_folders, negative_original_size=(16, 16))).images[0]
    assert level_diff(plain, positive) > 2 * TOLERANCE and level_diff(plain, negative) > 2 * TOLERANCE
    defaults = dict(original_size=(32, 32), crop_coords=(0, 0), target_size=(32, 32))
    assert level_diff(plain, engine.generate(request(sdxl_folders, **defaults)).images[0]) == 0


def test_negative_conditioning_shares_the_positive_until_any_negative_field_is_set():
    from engine.models.adapters import MicroConditioning

    positive = Request(prompt="x", original_size=(40, 48), crop_coords=(8, 4))
    assert MicroConditioning.from_request(positive, 32, 24, negative=True) == MicroConditioning((48, 40), (4, 8),
                                                                                               (32, 24))
    one = replace(positive, negative_crop_coords=(2, 6))  # the rest take the pipeline's defaults, not the positive
    assert MicroConditioning.from_request(one, 32, 24, negative=True) == MicroConditioning((32, 24), (6, 2), (32, 24))


def test_guidance_rescale_and_empty_negative_match_the_pipeline(engine, sdxl, sdxl_folders):
    """An empty negative prompt is zeros (the folder's force_zeros_for_empty_prompt), as in the pipeline."""
    sdxl.scheduler = make_scheduler("euler", sdxl.scheduler.config)
    expected = sdxl("a red circle", num_inference_steps=3, guidance_scale=5.0, guidance_rescale=0.7,
                    generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    result = engine.generate(request(sdxl_folders, negative_prompt="", steps=3, seed=5, scheduler="euler",
                                     guidance=GuidanceSettings("cfg", 5.0, rescale=0.7)))
    assert level_diff(result.images[0], expected) <= TOLERANCE


def test_command_line_size_flags_match_the_pipeline(sdxl, sdxl_folders, tmp_path):
    sdxl.scheduler = make_scheduler("ddim", sdxl.scheduler.config)
    expected = sdxl("a red circle", negative_prompt="blue square", num_inference_steps=3, guidance_scale=6.0,
                    generator=torch.Generator().manual_seed(4), output_type="np", **DIFFUSERS_MICRO).images[0]
    flags = [f for name, value in MICRO.items() for f in ("--" + name.replace("_", "-"), *map(str, value))]
    out = tmp_path / "xl.png"
    assert main(["generate", "--model", str(sdxl_folders["sdxl"]), "--prompt", "a red circle", "--negative-prompt",
                 "blue square", "--scale", "6", "--steps", "3", "--seed", "4", *flags, "--out", str(out)]) == 0
    image = Image.open(out)
    assert level_diff(image, expected) <= TOLERANCE
    params = parse_parameters(image.info["parameters"])
    assert params["Original size"] == "40x48" and params["Crop coords"] == "8 4" and params["Target size"] == "24x32"
    assert params["Negative crop coords"] == "2 6" and params["Negative target size"] == "64x56"


def test_reproduce_command_parses_back_to_the_same_micro_conditioning(sdxl_folders):
    req = request(sdxl_folders, **MICRO)
    command = command_for(req)
    assert "--original-size 40 48" in command and "--negative-crop-coords 2 6" in command
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert {name: tuple(getattr(args, name)) for name in MICRO} == MICRO


@pytest.mark.parametrize("scheduler", ["ddpm", "euler-a"])
def test_batched_seeds_equal_single_runs(engine, sdxl_folders, scheduler):
    req = request(sdxl_folders, seed=10, num_images=3, scheduler=scheduler, **MICRO)
    batch = engine.generate(req)
    for seed, image in zip(batch.seeds, batch.images):
        single = engine.generate(replace(req, seed=seed, num_images=1))
        assert level_diff(image, single.images[0]) <= TOLERANCE


def test_cross_attention_maps_on_sdxl(engine, sdxl_folders):
    from engine.attention import generate_with_attention

    result, maps = generate_with_attention(engine, request(sdxl_folders, **MICRO))
    assert [token for token, _ in maps] == ["a", "red", "circle"] and maps[0][1].shape == (16, 16)
    assert level_diff(result.images[0], engine.generate(request(sdxl_folders, **MICRO)).images[0]) == 0


@pytest.fixture(scope="module")
def controlnet_pipe(sdxl, sdxl_folders):
    components = {k: v for k, v in sdxl.components.items() if k not in ("image_encoder", "feature_extractor")}
    pipe = StableDiffusionXLControlNetPipeline(**components, controlnet=ControlNetModel.from_pretrained(
        sdxl_folders["sdxl-controlnet"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("guess_mode, scale, start, end", [(False, 1.0, 0.0, 1.0), (True, 0.7, 0.25, 0.75)])
def test_controlnet_matches_sdxl_controlnet_pipeline(engine, controlnet_pipe, sdxl_folders, guess_mode, scale, start,
                                                     end):
    controlnet_pipe.scheduler = make_scheduler("euler", controlnet_pipe.scheduler.config)
    expected = controlnet_pipe("a red circle", negative_prompt="blue square", image=control_image(),
                               num_inference_steps=4, guidance_scale=5.0, controlnet_conditioning_scale=scale,
                               control_guidance_start=start, control_guidance_end=end, guess_mode=guess_mode,
                               generator=torch.Generator().manual_seed(1), output_type="np",
                               **DIFFUSERS_MICRO).images[0]
    control = ControlSpec(control_image(), "canny", str(sdxl_folders["sdxl-controlnet"]), scale, start, end)
    result = engine.generate(request(sdxl_folders, controls=(control,), guess_mode=guess_mode, seed=1,
                                     scheduler="euler", guidance=GuidanceSettings("cfg", 5.0), **MICRO))
    assert level_diff(result.images[0], expected) <= TOLERANCE
    plain = engine.generate(request(sdxl_folders, seed=1, scheduler="euler", guidance=GuidanceSettings("cfg", 5.0),
                                    **MICRO)).images[0]
    assert level_diff(result.images[0], plain) > 2 * TOLERANCE  # the control acted


def test_two_controlnets_match_the_multi_controlnet_pipeline(engine, sdxl, sdxl_folders):
    nets = [ControlNetModel.from_pretrained(sdxl_folders[k]) for k in ("sdxl-controlnet", "sdxl-controlnet-2")]
    components = {k: v for k, v in sdxl.components.items() if k not in ("image_encoder", "feature_extractor")}
    pipe = StableDiffusionXLControlNetPipeline(**components, controlnet=nets)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("dpm++2m", sdxl.scheduler.config)
    images = [control_image(), control_image().transpose(Image.FLIP_LEFT_RIGHT)]
    expected = pipe("a red circle", negative_prompt="blue square", image=images, num_inference_steps=4,
                    guidance_scale=5.0, controlnet_conditioning_scale=[1.0, 0.5], control_guidance_start=[0.0, 0.5],
                    control_guidance_end=[1.0, 1.0], generator=torch.Generator().manual_seed(1), output_type="np",
                    **DIFFUSERS_MICRO).images[0]
    controls = (ControlSpec(images[0], "canny", str(sdxl_folders["sdxl-controlnet"]), 1.0, 0.0, 1.0),
                ControlSpec(images[1], "scribble", str(sdxl_folders["sdxl-controlnet-2"]), 0.5, 0.5, 1.0))
    result = engine.generate(request(sdxl_folders, controls=controls, seed=1, scheduler="dpm++2m",
                                     guidance=GuidanceSettings("cfg", 5.0), **MICRO))
    assert level_diff(result.images[0], expected) <= TOLERANCE


@pytest.mark.parametrize("layers, scale", [("mid", 6.0), ("down.1", 1.0)])
def test_pag_matches_the_sdxl_pag_pipeline(engine, sdxl_folders, layers, scale):
    pipe = StableDiffusionXLPAGPipeline.from_pretrained(sdxl_folders["sdxl"], pag_applied_layers=layer_ids(layers))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    expected = pipe("a red circle", negative_prompt="blue square", num_inference_steps=4, guidance_scale=scale,
                    pag_scale=2.5, generator=torch.Generator().manual_seed(3), output_type="np",
                    **DIFFUSERS_MICRO).images[0]
    guidance = GuidanceSettings("pag", scale, pag_scale=2.5, pag_layers=layers)
    result = engine.generate(request(sdxl_folders, guidance=guidance, **MICRO))
    assert level_diff(result.images[0], expected) <= TOLERANCE
    plain = engine.generate(request(sdxl_folders, guidance=GuidanceSettings("cfg", scale), **MICRO)).images[0]
    assert level_diff(result.images[0], plain) > 2 * TOLERANCE


@pytest.fixture
def weak_sdxl(sdxl_folders, tmp_path, monkeypatch):
    """The tiny SDXL registered with an untrained UNet of the same layout as its weak model (AutoGuidance)."""
    weak = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sdxl_folders["sdxl"] / "unet"))
    weak.save_pretrained(tmp_path / "weak")
    monkeypatch.setitem(registry.REGISTRY, "tiny-sdxl", registry.ModelSpec("tiny-sdxl", str(sdxl_folders["sdxl"]),
                                                                         "text", weak="tiny-sdxl-weak"))
    monkeypatch.setitem(registry.REGISTRY, "tiny-sdxl-weak",
                        registry.ModelSpec("tiny-sdxl-weak", str(tmp_path / "weak"), "unet"))
    return "tiny-sdxl"


@pytest.mark.parametrize("method", method_names())
def test_every_guidance_method_runs_on_sdxl(engine, sdxl_folders, weak_sdxl, method):
    model = weak_sdxl if method == "autoguidance" else str(sdxl_folders["sdxl"])
    result = engine.generate(request(sdxl_folders, model=model, steps=2, num_images=2,
                                     guidance=GuidanceSettings(method, 4.0), **MICRO))
    pixels = np.stack([np.asarray(im) for im in result.images]).astype(float)
    assert np.isfinite(pixels).all() and pixels.std() > 0


def test_size_conditioning_on_another_model_is_one_sentence(engine, sdxl_folders, tiny_folders):
    with pytest.raises(EngineError, match=r"^Size and crop conditioning \(--original-size, --negative-crop-coords\) "
                                          r"needs an SDXL model; this model is an SD 1.x model\.$"):
        engine.generate(request(sdxl_folders, model=str(tiny_folders["sd"]), original_size=(64, 64),
                                negative_crop_coords=(0, 8)))
    with pytest.raises(EngineError, match="belongs to SD3 models; this model is an SDXL model"):
        engine.generate(request(sdxl_folders, t5=False))
    with pytest.raises(EngineError, match="needs a diffusion \\(not flow-matching\\) scheduler; 'flow-euler'"):
        engine.generate(request(sdxl_folders, scheduler="flow-euler"))


@pytest.mark.parametrize("field, value, fragment", [
    ("original_size", (0, 64), "original size must be two whole numbers from 1"),
    ("crop_coords", (-1, 0), "crop coords must be two whole numbers from 0"),
    ("target_size", (64,), "target size must be two whole numbers"),
    ("negative_target_size", (64.5, 64), "negative target size must be two whole numbers"),
    ("negative_original_size", (10**6, 64), "to 16384"),
])
def test_bad_size_conditioning_is_one_sentence(sdxl_folders, field, value, fragment):
    with pytest.raises(EngineError, match=fragment):
        check_request(request(sdxl_folders, **{field: value}))


def test_bad_size_flag_on_the_command_line(sdxl_folders, tmp_path, capsys):
    assert main(["generate", "--model", str(sdxl_folders["sdxl"]), "--prompt", "x", "--original-size", "64", "x",
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "original size must be a whole number" in err and "\n" not in err
