"""CFG-Zero*: alpha* scaling and the zero-init steps."""

import torch

from engine.guiders import GuidanceSettings
from engine.guiders.cfg_zero_star import cfg_zero_star
from engine.sampler import Step

from .conftest import per_sample_dot


def test_cfg_zero_star(preds):
    c, u = preds
    alpha = per_sample_dot(c, u) / per_sample_dot(u, u)
    expected = alpha.view(-1, 1, 1, 1).float() * u + 4.0 * (c - alpha.view(-1, 1, 1, 1).float() * u)
    torch.testing.assert_close(cfg_zero_star(c, u, 4.0), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cfg_zero_star(c, u, 1.0), c, rtol=1e-6, atol=1e-6)


def test_zero_init_steps_replace_the_model_call():
    x = torch.ones(1, 4, 2, 2)
    step = lambda i: Step(i, 10, torch.tensor(0), torch.tensor(0.5))  # noqa: E731
    guider = GuidanceSettings("cfg-zero-star", 3.0, zero_init_steps=2).build()
    assert torch.equal(guider.early(x, step(1)), torch.zeros_like(x)) and guider.early(x, step(2)) is None
    assert GuidanceSettings("cfg", 3.0).build().early(x, step(0)) is None
