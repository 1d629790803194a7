"""TCFG equals diffusers' tangential normalized_guidance (default formulation) on tensors, per image, and over a
whole run against a loop guided by diffusers' TangentialClassifierFreeGuidance."""

import numpy as np
import pytest
import torch
from diffusers.guiders import TangentialClassifierFreeGuidance
from diffusers.guiders.tangential_classifier_free_guidance import normalized_guidance

from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.guiders.tcfg import tcfg
from engine.request import Request
from engine.sampler import Step

from .diffusers_loop import guided_run

STEP = Step(0, 10, torch.tensor(500), torch.tensor(0.5))


def pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(shape, generator=g)
    return c, torch.randn(shape, generator=g) * 0.7 + 0.5 * c


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 4, 16, 16), (2, 16, 32)])
@pytest.mark.parametrize("scale", [0.0, 3.0, 7.5])
def test_tcfg_equals_diffusers(shape, scale):
    """The closed-form projection against diffusers' SVD: equal to float32 rounding (a few ulps of the output)."""
    c, u = pair(shape)
    expected = normalized_guidance(c, u, scale)
    torch.testing.assert_close(tcfg(c, u, scale), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("case", ["parallel", "antiparallel", "orthogonal", "uncond larger", "zero uncond"])
def test_the_projection_holds_where_the_svd_is_degenerate_or_one_sided(case):
    c, u = pair((2, 4, 8, 8), seed=4)
    u = {"parallel": 0.5 * c + 1e-4 * u, "antiparallel": -2.0 * c, "orthogonal": u - (u * c).sum() / (c * c).sum() * c,
         "uncond larger": 10.0 * u, "zero uncond": torch.zeros_like(u)}[case]
    expected = normalized_guidance(c, u, 5.0)
    torch.testing.assert_close(tcfg(c, u, 5.0), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert torch.isfinite(tcfg(torch.zeros_like(c), torch.zeros_like(c), 5.0)).all()


def test_per_image_scales_equal_per_image_calls():
    c, u = pair((3, 4, 8, 8), seed=1)
    scales = (1.0, 3.0, 7.5)
    ours = GuidanceSettings("tcfg", scales).build().guide(c, u, STEP)
    for i, s in enumerate(scales):
        torch.testing.assert_close(ours[i:i + 1], tcfg(c[i:i + 1], u[i:i + 1], s), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours[i:i + 1], normalized_guidance(c[i:i + 1], u[i:i + 1], s), rtol=1e-5,
                                   atol=1e-5)


def test_scale_one_is_the_conditional_prediction():
    c, u = pair((2, 4, 8, 8), seed=2)
    torch.testing.assert_close(tcfg(c, u, 1.0), c, rtol=1e-5, atol=1e-5)
    assert (tcfg(c, u, 5.0) - (u + 5.0 * (c - u))).abs().max() > 1e-2  # it is not plain CFG


def levels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def test_whole_run_equals_diffusers_guider(tiny_folders):
    folder = str(tiny_folders["sd"])
    expected = guided_run(folder, "a red circle", 4, 3, TangentialClassifierFreeGuidance(guidance_scale=6.0))
    engine = Engine()
    run = lambda settings: engine.generate(Request(model=folder, prompt="a red circle", steps=4, seed=3,  # noqa: E731
                                                   guidance=settings)).images[0]
    got = run(GuidanceSettings("tcfg", 6.0))
    assert np.abs(levels(got) - levels(expected)).max() <= 1
    assert np.abs(levels(got) - levels(run(GuidanceSettings("cfg", 6.0)))).max() > 1  # it really differs from CFG

