"""The lab's one bootstrap: fixed-seed intervals of a mean, by prompt when given the prompts, exact at 0 and 1, and
paired differences between two methods on the same prompts and seeds."""

import numpy as np
import pytest

from world import bootstrap, clopper_pearson, paired_difference
from world.measures import summary

PROMPTS = [p for p in range(8) for _ in range(8)]  # 8 prompts x 8 seeds


def test_the_interval_of_a_mean_on_known_data():
    assert bootstrap([0.3] * 10) == pytest.approx((0.3, 0.3, 0.3))
    assert bootstrap([None, None]) == (None, None, None) == bootstrap([])
    mean, low, high = bootstrap([0, 1] * 32)  # a proportion of 0.5 over 64: about +-0.12 (GUIDANCE.md)
    assert mean == 0.5 and 0.10 <= mean - low <= 0.14 and 0.10 <= high - mean <= 0.14
    assert bootstrap([0, 1] * 32) == (mean, low, high)  # a fixed seed
    values = np.random.default_rng(1).normal(2.0, 1.0, 400)
    _, low, high = bootstrap(values)
    se = values.std() / np.sqrt(len(values))
    assert abs((high - low) - 2 * 1.96 * se) < 0.25 * 2 * 1.96 * se
    assert bootstrap([None, 0.2, 0.4], ["a", "b", "c"])[0] == pytest.approx(0.3)  # Nones leave their prompt too


def test_a_proportion_at_0_or_1_gets_the_exact_bound():
    assert clopper_pearson(64, 64) == pytest.approx((0.944, 1.0), abs=5e-4)
    assert clopper_pearson(0, 64) == pytest.approx((0.0, 0.056), abs=5e-4)
    low, high = clopper_pearson(32, 64)  # the textbook exact interval of 32/64
    assert low == pytest.approx(0.372, abs=1e-3) and high == pytest.approx(0.628, abs=1e-3)
    assert bootstrap([1.0] * 64, binary=True) == pytest.approx((1.0, 0.944, 1.0), abs=5e-4)
    assert bootstrap([0] * 64, PROMPTS, binary=True) == pytest.approx((0.0, 0.0, 0.056), abs=5e-4)
    assert bootstrap([1] * 63 + [0], binary=True)[1] < 0.95  # near the boundary too: the bootstrap alone: 0.95
    assert summary("adherence", [1.0] * 64, binary=True)["adherence_low"] == pytest.approx(0.944, abs=5e-4)
    assert bootstrap([0.0] * 8) == (0.0, 0.0, 0.0)  # a measure that is not a share of images (clipping) stays
    with pytest.raises(ValueError, match="each 0 or 1"):
        bootstrap([0.5, 1.0], binary=True)


def test_resampling_by_prompt_counts_the_spread_between_prompts():
    # half the prompts always right, half never: 64 images, but only 8 independent prompts
    values = [float(p < 4) for p in PROMPTS]
    _, low, high = bootstrap(values, PROMPTS)
    _, image_low, image_high = bootstrap(values)
    assert high - low > 2 * (image_high - image_low)
    assert 0.1 < low < 0.3 and 0.7 < high < 0.9
    # prompts that agree within themselves and with each other: no wider than by image
    flat = [0, 1] * 32
    assert bootstrap(flat, PROMPTS)[2] - bootstrap(flat, PROMPTS)[1] <= bootstrap(flat)[2] - bootstrap(flat)[1] + 0.03
    with pytest.raises(ValueError, match="one cluster id per value"):
        bootstrap([0.1, 0.2], ["a"])


def test_paired_differences_cancel_what_the_prompts_share():
    rng = np.random.default_rng(0)
    prompt_effect = np.repeat(rng.normal(0, 0.1, 8), 8)
    a = 0.3 + prompt_effect + rng.normal(0, 0.01, 64)
    b = a - 0.02 + rng.normal(0, 0.005, 64)
    mean, low, high = paired_difference(a, b, PROMPTS)
    assert mean == pytest.approx(0.02, abs=0.005) and 0 < low < mean < high < 0.04  # a real, small difference
    _, a_low, a_high = bootstrap(a, PROMPTS)
    assert high - low < (a_high - a_low) / 5  # far tighter than comparing the two intervals
    with pytest.raises(ValueError, match="equal"):
        paired_difference([1, 0], [1], None)


def test_a_paired_proportion_with_no_discordant_pair_is_not_a_point():
    mean, low, high = paired_difference([1] * 64, [1] * 64, PROMPTS, binary=True)
    assert mean == 0 and low == pytest.approx(-0.066, abs=1e-3) and high == pytest.approx(0.066, abs=1e-3)
    mean, low, high = paired_difference([1] * 64, [0] * 64, binary=True)
    assert mean == 1 and 0.85 < low < 0.9 and high == 1
    assert paired_difference([0.1] * 8, [0.1] * 8) == (0.0, 0.0, 0.0)  # not shares: no exact bound
