"""APG equals diffusers' normalized_guidance (paper formulation), its guider keeps the momentum across steps and
works in x0 space."""

import pytest
import torch
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

from engine.guiders import GuidanceSettings
from engine.guiders.apg import apg
from engine.sampler import Step
from engine.spaces import denoised, eps_from_x0

from .conftest import per_sample_dot


@pytest.mark.parametrize("eta,r", [(0.0, 0.0), (0.3, 0.0), (0.0, 2.5), (1.0, 10.0)])
def test_apg_equals_diffusers(preds, eta, r):
    c, u = preds
    expected = normalized_guidance(c, u, 7.5 - 1, None, eta, r, use_original_formulation=True)
    torch.testing.assert_close(apg(c, u, 7.5, eta=eta, norm_threshold=r), expected, rtol=0, atol=0)


def test_apg_guider_keeps_momentum_across_steps_in_x0_space(preds):
    c, u = preds
    x = torch.randn_like(c)
    a = torch.tensor(0.6)
    guider = GuidanceSettings("apg", 5.0, momentum=-0.5).build()
    buffer = MomentumBuffer(-0.5)
    for k in range(3):
        step = Step(k, 10, torch.tensor(900 - 100 * k), a)
        ours = guider.combine(c * (k + 1), u, x, step)
        x0 = normalized_guidance(denoised(c * (k + 1), x, a), denoised(u, x, a), 4.0, buffer, 0.0, 0.0,
                                 use_original_formulation=True)
        torch.testing.assert_close(ours, eps_from_x0(x0, x, a), rtol=0, atol=0)
    fresh = GuidanceSettings("apg", 5.0).build().combine(c * 3, u, x, Step(2, 10, torch.tensor(700), a))
    assert (fresh - ours).abs().max() > 1e-3  # momentum really changes the result


def test_apg_eta_zero_update_orthogonal_to_cond(preds):
    c, u = preds
    out = apg(c, u, 5.0)
    assert per_sample_dot(out - c, c).abs().max() < 1e-4
