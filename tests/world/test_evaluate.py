"""Evaluator: agrees with the renderer's labels, also on blurred noisy images; image measures."""
import numpy as np
import pytest

from world import (clipped_fraction, degrade, diversity, evaluate, parse_caption, render_seed, saturation)
from world.evaluate import accuracy

FRESH_SEED = 55_000_000  # never used while tuning the evaluator


@pytest.mark.parametrize("n_objects", [1, 2])
@pytest.mark.parametrize("degraded,floor", [(False, 0.98), (True, 0.95)])
def test_accuracy_per_attribute(n_objects, degraded, floor):
    acc = accuracy(n=300, n_objects=n_objects, seed=FRESH_SEED + 1000 * n_objects, degraded=degraded)
    for name in ("shape", "colour", "size", "position", "count"):
        assert acc[name] >= floor, (name, acc)


def test_unspecified_fields_score_none_and_wrong_requests_fail():
    r = render_seed(11)
    o = r.scene.objects[0]
    result = evaluate(r.image, parse_caption(f"a {o.colour} {o.shape}"))
    assert result.objects[0].size is None and result.objects[0].position is None and result.background is None
    assert result.all_correct and result.both_correct is None
    other = "blue" if o.colour != "blue" else "red"
    wrong = evaluate(r.image, parse_caption(f"a {other} {o.shape} and a {other} {o.shape}"))
    assert wrong.count is False and not wrong.all_correct and wrong.both_correct is False


def test_two_object_matching_reports_both():
    r = render_seed(12, n_objects=2)
    result = evaluate(r.image, r.scene)
    assert result.both_correct and len(result.objects) == 2
    assert {s.detection.position for s in result.objects} == {o.position for o in r.scene.objects}


def test_measures():
    grey = np.full((64, 64, 3), 128, np.uint8)
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    assert saturation(grey) == 0.0 and saturation(red) == pytest.approx(1.0)
    assert clipped_fraction(grey) == 0.0 and clipped_fraction(red) == 1.0
    assert diversity([grey, grey]) == 0.0
    assert diversity([red, np.zeros_like(red)]) == pytest.approx(1 / 3)
    noisy = degrade(grey, np.random.default_rng(0))
    assert 0 < diversity([grey, noisy]) < 0.05
