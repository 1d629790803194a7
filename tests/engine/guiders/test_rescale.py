"""Guidance rescale equals diffusers' rescale_noise_cfg and, as a modifier, acts on any method."""

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from engine.guiders import GuidanceSettings
from engine.guiders.cfg import cfg
from engine.guiders.rescale import rescale
from engine.sampler import Step


def test_rescale_matches_diffusers(preds):
    c, u = preds
    guided = cfg(c, u, 7.5)
    torch.testing.assert_close(rescale(guided, c, 0.7), rescale_noise_cfg(guided, c, 0.7))
    std = rescale(guided, c, 1.0).flatten(1).std(1)
    torch.testing.assert_close(std, c.flatten(1).std(1), rtol=1e-4, atol=1e-5)


def test_rescale_modifier_wraps_the_method(preds):
    c, u = preds
    step = Step(0, 10, torch.tensor(999), torch.tensor(0.5))
    guided = GuidanceSettings("cfg", 7.5, rescale=0.7).build().combine(c, u, c, step)
    torch.testing.assert_close(guided, rescale(cfg(c, u, 7.5), c, 0.7), rtol=0, atol=0)
    plain = GuidanceSettings("cfg", 7.5).build().combine(c, u, c, step)
    torch.testing.assert_close(plain, cfg(c, u, 7.5), rtol=0, atol=0)
