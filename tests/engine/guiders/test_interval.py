"""The guidance interval: which steps run the unconditional branch."""

import torch

from engine.guiders import GuidanceSettings
from engine.guiders.interval import in_interval
from engine.sampler import Step


def test_interval_rule():
    assert [in_interval(i, 10, (0.2, 0.6)) for i in range(10)] == [False, False, True, True, True, True,
                                                                    False, False, False, False]
    assert all(in_interval(i, 7, (0.0, 1.0)) for i in range(7))


def needs(settings, index, n=10):
    return settings.build().needs_uncond(Step(index, n, torch.tensor(0), torch.tensor(0.5)))


def test_uncond_runs_only_where_guidance_can_act():
    assert not needs(GuidanceSettings("cfg", 1.0), 0)
    assert not needs(GuidanceSettings("none", 7.0), 0)
    assert needs(GuidanceSettings("cfg", 7.0), 0)
    assert not needs(GuidanceSettings("cfg", 7.0, interval=(0.5, 1.0)), 0)
    assert needs(GuidanceSettings("apg", 7.0, interval=(0.5, 1.0)), 5)
