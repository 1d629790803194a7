"""APG's size-normalised norm threshold r' (r = r' sqrt(N / (128*128*4))): the same r' clips the same fraction of
||d|| on a small and an SDXL-size latent, equals the plain threshold on the reference size, and excludes it."""

import math

import pytest
import torch

from engine.guiders import GuidanceSettings
from engine.guiders.apg import REFERENCE_ELEMENTS, apg
from engine.sampler import Step

STEP = Step(0, 10, torch.tensor(500), torch.tensor(0.5))


def kept_fraction(shape, **values) -> float:
    """||clipped d|| / ||d|| for one sample whose d = c - u has i.i.d. entries of std 0.1; eta 1 keeps all of d."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(shape, generator=g)
    d = 0.1 * torch.randn(shape, generator=g)
    out = GuidanceSettings("apg", 2.0, eta=1.0, **values).build().guide(c, c - d, STEP)  # c + (2 - 1) clipped d
    return float((out - c).double().norm() / d.double().norm())


def test_same_per_size_threshold_clips_the_same_fraction_at_any_size():
    small, sdxl = (1, 4, 16, 16), (1, 4, 128, 128)
    per = dict(norm_threshold_per=15.0)
    fraction = kept_fraction(sdxl, **per)
    assert 0.2 < fraction < 0.9  # it really clips
    assert kept_fraction(small, **per) == pytest.approx(fraction, rel=0.05)
    # The plain threshold, the same on both, leaves the small latent's (8 times smaller) ||d|| unclipped.
    assert kept_fraction(small, norm_threshold=15.0) == pytest.approx(1.0)
    assert kept_fraction(sdxl, norm_threshold=15.0) == fraction
    assert kept_fraction(small, norm_threshold=15.0 * math.sqrt(16 * 16 * 4 / REFERENCE_ELEMENTS)) == \
        pytest.approx(kept_fraction(small, **per), rel=1e-9)


def test_on_the_reference_size_it_equals_the_plain_threshold():
    g = torch.Generator().manual_seed(1)
    c = torch.randn(2, 4, 128, 128, generator=g)
    u = c - 0.1 * torch.randn(2, 4, 128, 128, generator=g)
    plain = GuidanceSettings("apg", 5.0, norm_threshold=15.0).build().guide(c, u, STEP)
    per = GuidanceSettings("apg", 5.0, norm_threshold_per=15.0).build().guide(c, u, STEP)
    torch.testing.assert_close(per, plain, rtol=0, atol=0)
    torch.testing.assert_close(per, apg(c, u, 5.0, norm_threshold=15.0), rtol=0, atol=0)


def test_default_is_off_and_a_plain_threshold_takes_the_place_of_the_size_normalised_one():
    assert GuidanceSettings("apg", 5.0)["norm_threshold_per"] == 0.0  # the CLI's default; the UI starts at 15
    c, u = torch.randn(2, 1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    step = Step(0, 10, torch.tensor(999), torch.tensor(0.5))
    both = GuidanceSettings("apg", 5.0, norm_threshold=2.0, norm_threshold_per=15.0).build().guide(c, u, step)
    plain = GuidanceSettings("apg", 5.0, norm_threshold=2.0).build().guide(c, u, step)
    torch.testing.assert_close(both, plain, rtol=0, atol=0)
