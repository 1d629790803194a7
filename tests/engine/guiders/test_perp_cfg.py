"""Perp-CFG against the brief's properties."""

import torch

from engine.guiders.cfg import cfg
from engine.guiders.perp_cfg import perp_cfg

from .conftest import per_sample_dot


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
    assert (out - c).abs().max() > 0.1  # and it is not trivially zero
