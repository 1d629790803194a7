"""FDG equals diffusers' FrequencyDecoupledGuidance.forward on tensors (its own pyramid, projection and rebuild),
per image, at a level of scale 1 (the conditional level, as diffusers intends), and over a whole run against a loop
guided by diffusers' guider object; at --scale 1 it still guides the high frequencies."""

import numpy as np
import pytest
import torch
from diffusers.guiders import FrequencyDecoupledGuidance
from diffusers.guiders.frequency_decoupled_guidance import build_image_from_pyramid, build_laplacian_pyramid_func

from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import GUIDERS, GuidanceSettings
from engine.guiders.fdg import HIGH_SCALE, fdg
from engine.request import Request
from engine.sampler import Step

from .diffusers_loop import guided_run

STEP = Step(0, 10, torch.tensor(500), torch.tensor(0.5))


def pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(shape, generator=g)
    return c, torch.randn(shape, generator=g) * 0.7 + 0.5 * c


def diffusers_fdg(c, u, high, low, weight=1.0):
    guider = FrequencyDecoupledGuidance(guidance_scales=[high, low], parallel_weights=weight)
    return guider.forward(c, u).pred


def test_defaults_are_diffusers():
    assert list(FrequencyDecoupledGuidance().guidance_scales) == [HIGH_SCALE.default, 5.0]
    assert GUIDERS["fdg"].plain_at_one is False


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 4, 16, 16), (2, 3, 32, 24)])
@pytest.mark.parametrize("high,low,weight", [(10.0, 5.0, 1.0), (4.0, 7.5, 1.0), (10.0, 5.0, 0.3), (2.0, 0.0, 0.0)])
def test_fdg_equals_diffusers(shape, high, low, weight):
    c, u = pair(shape)
    torch.testing.assert_close(fdg(c, u, (high, low), weight), diffusers_fdg(c, u, high, low, weight), rtol=0, atol=0)


@pytest.mark.parametrize("high,low", [(1.0, 5.0), (10.0, 1.0)])
def test_a_level_at_scale_one_is_the_conditional_level(high, low):
    c, u = pair((2, 4, 16, 16), seed=4)
    cond, uncond = build_laplacian_pyramid_func(c, 2), build_laplacian_pyramid_func(u, 2)
    guided = [cv if s == 1 else uv + s * (cv - uv) for cv, uv, s in zip(cond, uncond, (high, low))]
    torch.testing.assert_close(fdg(c, u, (high, low)), build_image_from_pyramid(guided),
                               rtol=0, atol=0)
    torch.testing.assert_close(fdg(c, u, (1.0, 1.0), 0.5), c, rtol=1e-5, atol=1e-5)  # c rebuilt, any weight


def test_per_image_scales_equal_per_image_calls():
    c, u = pair((3, 4, 8, 8), seed=1)
    scales = (2.0, 3.0, 7.5)
    ours = GuidanceSettings("fdg", scales, fdg_high_scale=9.0, fdg_parallel_weight=0.5).build().guide(c, u, STEP)
    for i, s in enumerate(scales):
        expected = diffusers_fdg(c[i:i + 1], u[i:i + 1], 9.0, s, 0.5)
        torch.testing.assert_close(ours[i:i + 1], expected, rtol=1e-6, atol=1e-6)
    with_one = GuidanceSettings("fdg", (1.0, 3.0)).build().guide(c[:2], u[:2], STEP)
    torch.testing.assert_close(with_one[:1], fdg(c[:1], u[:1], (10.0, 1.0)), rtol=0, atol=0)


def test_scale_one_still_guides_unless_the_high_scale_is_one_too():
    assert GuidanceSettings("fdg", 1.0).guided  # the negative prompt is encoded for the high frequencies' guidance
    assert GuidanceSettings("fdg", 1.0).build().needs_uncond(STEP)
    assert not GuidanceSettings("fdg", 1.0, fdg_high_scale=1.0).guided
    assert not GuidanceSettings("fdg", 1.0, fdg_high_scale=1.0).build().needs_uncond(STEP)
    assert GuidanceSettings("fdg", (1.0, 1.0, 4.0)).build().needs_uncond(STEP)


def test_odd_latent_sides_are_refused_in_one_sentence():
    c, u = pair((1, 4, 9, 8))
    with pytest.raises(EngineError, match="divisible by 2; this latent is 9x8"):
        fdg(c, u, (10.0, 5.0))


def levels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


@pytest.fixture(scope="module")
def engine():
    return Engine()


def test_whole_run_equals_diffusers_guider(engine, tiny_folders):
    folder = str(tiny_folders["sd"])
    guider = FrequencyDecoupledGuidance(guidance_scales=[10.0, 4.0], parallel_weights=0.5)
    expected = guided_run(folder, "a red circle", 4, 3, guider)
    run = lambda settings: engine.generate(Request(model=folder, prompt="a red circle", steps=4, seed=3,  # noqa: E731
                                                   guidance=settings)).images[0]
    got = run(GuidanceSettings("fdg", 4.0, fdg_parallel_weight=0.5))
    assert np.abs(levels(got) - levels(expected)).max() <= 1
    assert np.abs(levels(got) - levels(run(GuidanceSettings("cfg", 4.0)))).max() > 1  # it really differs from CFG


def test_per_image_scales_in_one_run_equal_separate_runs(engine, tiny_folders):
    """As a Compare row runs: one batch, one seed, a scale per image (scale 1 included)."""
    folder = str(tiny_folders["sd"])
    base = dict(model=str(folder), prompt="a red circle", steps=3)
    row = engine.generate(Request(**base, num_images=3, image_seeds=(4, 4, 4),
                                  guidance=GuidanceSettings("fdg", (1.0, 3.0, 7.5)))).images
    for scale, image in zip((3.0, 7.5), row[1:]):
        single = engine.generate(Request(**base, seed=4, guidance=GuidanceSettings("fdg", scale))).images[0]
        assert np.abs(levels(image) - levels(single)).max() <= 1
    cond = engine.generate(Request(**base, seed=4, guidance=GuidanceSettings("cfg", 1.0))).images[0]
    assert np.abs(levels(row[0]) - levels(cond)).max() > 1  # scale 1 still guides the high frequencies
