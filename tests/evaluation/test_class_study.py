"""The class study's matching: the first rising crossing of the reference accuracy, linear between scales."""

from evaluation.class_study import METHODS, crossing, settings


def test_crossing_interpolates_on_the_rising_part():
    rows = [{"scale": 1, "accuracy": 0.5}, {"scale": 2, "accuracy": 0.7}, {"scale": 4, "accuracy": 0.9},
            {"scale": 8, "accuracy": 0.6}]
    assert abs(crossing(rows, 0.8) - 3.0) < 1e-9
    assert crossing(rows, 0.4) == 1  # the lowest scale already reaches it
    assert crossing(rows, 0.95) is None  # never reached


def test_every_method_builds_its_settings():
    for label in METHODS:
        s = settings(label, 3.0)
        s.check()
    assert settings("classifier guidance (CFG 1)", 10.0).classifier_scale == 10.0
