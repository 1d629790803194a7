"""Guidance methods against the brief's properties and diffusers' own functions."""

import pytest
import torch
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from engine.guidance import (APGState, GuidanceSettings, apg, cfg, cfg_zero_star, combine, in_interval, perp_cfg,
                             rescale)


@pytest.fixture
def preds():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(3, 4, 8, 8, generator=g)
    u = torch.randn(3, 4, 8, 8, generator=g) * 0.7 + 0.5 * c
    return c, u


def per_sample_dot(a, b):
    return (a.double() * b.double()).flatten(1).sum(1)


def test_cfg_endpoints(preds):
    c, u = preds
    torch.testing.assert_close(cfg(c, u, 1.0), c)
    torch.testing.assert_close(cfg(c, u, 0.0), u)
    torch.testing.assert_close(cfg(c, u, 3.0), u + 3 * (c - u))


def test_perp_cfg_eta_one_is_cfg(preds):
    c, u = preds
    for s in (0.0, 2.0, 7.5):
        torch.testing.assert_close(perp_cfg(c, u, s, eta=1.0), cfg(c, u, s), rtol=1e-5, atol=1e-5)


def test_perp_cfg_scale_one_is_cond(preds):
    c, u = preds
    torch.testing.assert_close(perp_cfg(c, u, 1.0), c)


def test_perp_cfg_deviation_orthogonal_to_uncond(preds):
    c, u = preds
    out = perp_cfg(c, u, 7.5, eta=0.0)
    cosine = per_sample_dot(out - c, u) / ((out - c).double().flatten(1).norm(dim=1) * u.double().flatten(1).norm(dim=1))
    assert cosine.abs().max() < 1e-6
    # and it is not trivially zero
    assert (out - c).abs().max() > 0.1


@pytest.mark.parametrize("eta,r", [(0.0, 0.0), (0.3, 0.0), (0.0, 2.5), (1.0, 10.0)])
def test_apg_equals_diffusers(preds, eta, r):
    c, u = preds
    expected = normalized_guidance(c, u, 7.5 - 1, None, eta, r, use_original_formulation=True)
    torch.testing.assert_close(apg(c, u, 7.5, eta=eta, norm_threshold=r), expected, rtol=0, atol=0)


def test_apg_momentum_state_matches_diffusers_buffer(preds):
    c, u = preds
    state, buffer = APGState(-0.5), MomentumBuffer(-0.5)
    for k in range(3):
        ours = apg(c * (k + 1), u, 5.0, state=state)
        theirs = normalized_guidance(c * (k + 1), u, 4.0, buffer, 0.0, 0.0, use_original_formulation=True)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # momentum really changes the result compared with none
    assert (apg(c * 3, u, 5.0) - ours).abs().max() > 1e-3


def test_apg_eta_zero_update_orthogonal_to_cond(preds):
    c, u = preds
    out = apg(c, u, 5.0)
    assert per_sample_dot(out - c, c).abs().max() < 1e-4


def test_rescale_matches_diffusers(preds):
    c, u = preds
    guided = cfg(c, u, 7.5)
    torch.testing.assert_close(rescale(guided, c, 0.7), rescale_noise_cfg(guided, c, 0.7))
    std = rescale(guided, c, 1.0).flatten(1).std(1)
    torch.testing.assert_close(std, c.flatten(1).std(1), rtol=1e-4, atol=1e-5)


def test_cfg_zero_star(preds):
    c, u = preds
    alpha = per_sample_dot(c, u) / per_sample_dot(u, u)
    expected = alpha.view(-1, 1, 1, 1).float() * u + 4.0 * (c - alpha.view(-1, 1, 1, 1).float() * u)
    torch.testing.assert_close(cfg_zero_star(c, u, 4.0), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cfg_zero_star(c, u, 1.0), c, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", [
    lambda c, u: cfg(c, u, 5.0), lambda c, u: perp_cfg(c, u, 5.0), lambda c, u: apg(c, u, 5.0, norm_threshold=2.0),
    lambda c, u: cfg_zero_star(c, u, 5.0), lambda c, u: rescale(cfg(c, u, 5.0), c, 0.7)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes_kept(preds, fn, dtype):
    c, u = preds
    assert fn(c.to(dtype), u.to(dtype)).dtype == dtype


def test_interval_rule():
    assert [in_interval(i, 10, (0.2, 0.6)) for i in range(10)] == [False, False, True, True, True, True,
                                                                    False, False, False, False]
    assert all(in_interval(i, 7, (0.0, 1.0)) for i in range(7))


def test_settings_skip_uncond_where_guidance_cannot_act():
    assert not GuidanceSettings("cfg", 1.0).needs_uncond(0, 10)
    assert not GuidanceSettings("none", 7.0).needs_uncond(0, 10)
    assert GuidanceSettings("cfg", 7.0).needs_uncond(0, 10)
    assert not GuidanceSettings("cfg", 7.0, interval=(0.5, 1.0)).needs_uncond(0, 10)
    assert GuidanceSettings("cfg-zero-star", 3.0).zeroed(0) and not GuidanceSettings("cfg", 3.0).zeroed(0)


def test_combine_rejects_unknown_method(preds):
    with pytest.raises(ValueError, match="Unknown guidance"):
        combine(GuidanceSettings("magic", 3.0), *preds)
