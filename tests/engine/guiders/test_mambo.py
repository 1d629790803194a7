"""MAMBO-G equals diffusers' mambo_guidance (default formulation) with its torch.norm call, which raises on the
pinned torch, patched to the same vector norm; and the formula; per image; and over a whole run against a loop
guided by diffusers' MagnitudeAwareGuidance."""

import numpy as np
import pytest
import torch
from diffusers.guiders import MagnitudeAwareGuidance
from diffusers.guiders import magnitude_aware_guidance as diffusers_mambo

from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.guiders.mambo import ALPHA, mambo
from engine.request import Request
from engine.sampler import Step

from .diffusers_loop import guided_run

STEP = Step(0, 10, torch.tensor(500), torch.tensor(0.5))


class _TorchWithVectorNorm:
    """torch, but torch.norm(x, dim=list) is the vector norm over those dims (as in the torch diffusers wrote for)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def norm(x, dim, keepdim=False):
        return torch.linalg.vector_norm(x, dim=dim, keepdim=keepdim)


@pytest.fixture
def patched_diffusers(monkeypatch):
    monkeypatch.setattr(diffusers_mambo, "torch", _TorchWithVectorNorm())


def pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(shape, generator=g)
    return c, torch.randn(shape, generator=g) * 0.7 + 0.5 * c


def test_diffusers_call_raises_on_this_torch():
    c, u = pair((2, 4, 8, 8))
    with pytest.raises(RuntimeError):  # the reason mambo() computes the norms itself
        diffusers_mambo.mambo_guidance(c, u, 5.0)


def test_default_alpha_is_diffusers():
    assert ALPHA.default == MagnitudeAwareGuidance().alpha == 8.0


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 4, 16, 16), (2, 16, 32)])
@pytest.mark.parametrize("scale,alpha", [(0.0, 8.0), (5.0, 8.0), (7.5, 0.5), (7.5, 0.0)])
def test_mambo_equals_patched_diffusers(patched_diffusers, shape, scale, alpha):
    c, u = pair(shape)
    expected = diffusers_mambo.mambo_guidance(c, u, scale, alpha)
    torch.testing.assert_close(mambo(c, u, scale, alpha), expected, rtol=0, atol=0)


def test_mambo_equals_the_formula():
    c, u = pair((3, 4, 8, 8), seed=3)
    c, u = c.double(), u.double()
    ratio = (c - u).flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)  # (B,)
    final_scale = (1 + (6.0 - 1) * torch.exp(-2.0 * ratio)).view(-1, 1, 1, 1)
    torch.testing.assert_close(mambo(c, u, 6.0, 2.0), u + final_scale * (c - u), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mambo(c, u, 6.0, 0.0), u + 6.0 * (c - u), rtol=1e-12, atol=1e-12)  # alpha 0: CFG


def test_per_image_scales_equal_per_image_calls(patched_diffusers):
    c, u = pair((3, 4, 8, 8), seed=1)
    scales = (1.0, 3.0, 7.5)
    ours = GuidanceSettings("mambo", scales, alpha=4.0).build().guide(c, u, STEP)
    for i, s in enumerate(scales):
        expected = diffusers_mambo.mambo_guidance(c[i:i + 1], u[i:i + 1], s, 4.0)
        torch.testing.assert_close(ours[i:i + 1], expected, rtol=1e-6, atol=1e-6)


def test_scale_one_is_the_conditional_prediction():
    c, u = pair((2, 4, 8, 8), seed=2)
    torch.testing.assert_close(mambo(c, u, 1.0, 8.0), c, rtol=1e-6, atol=1e-6)


def levels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def test_whole_run_equals_diffusers_guider(patched_diffusers, tiny_folders):
    folder = str(tiny_folders["sd"])
    expected = guided_run(folder, "a red circle", 4, 3, MagnitudeAwareGuidance(guidance_scale=6.0, alpha=8.0))
    engine = Engine()
    run = lambda settings: engine.generate(Request(model=folder, prompt="a red circle", steps=4, seed=3,  # noqa: E731
                                                   guidance=settings)).images[0]
    got = run(GuidanceSettings("mambo", 6.0, alpha=8.0))
    assert np.abs(levels(got) - levels(expected)).max() <= 1
    assert np.abs(levels(got) - levels(run(GuidanceSettings("cfg", 6.0)))).max() > 1  # it really differs from CFG

