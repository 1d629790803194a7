"""The class evaluation: balanced rounds of classes, and every row of the report end to end."""

import pytest

from evaluation import eval_class
from training.noise_accuracy import NOISE_LEVELS
from world import SHAPES


def test_eval_class_never_makes_fewer_images_than_asked():
    per_round = eval_class.PER_BATCH * len(SHAPES)
    for n in (1, per_round - 1, per_round, per_round + 1, 200):
        images = eval_class.batch_count(n) * eval_class.PER_BATCH
        assert n <= images < n + per_round and images % per_round == 0
    assert eval_class.batch_count(200) * eval_class.PER_BATCH == 240


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(eval_class, "PER_BATCH", 2)
    monkeypatch.setattr(eval_class, "CFG_SCALES", (1.0, 4.0))
    monkeypatch.setattr(eval_class, "CLASSIFIER_SCALES", (0.0, 10.0))
    monkeypatch.setattr(eval_class, "CFG_UNDER_CLASSIFIER", (4.0,))


def test_the_report_runs_every_row_end_to_end(lab_models, small):
    results = eval_class.report(12, 2, dit=str(lab_models / "dit"), classifier=str(lab_models / "classifier"),
                                sd=str(lab_models / "sd"), eval_n=12)
    kinds = [(r["kind"], r["cfg"], r["classifier_scale"]) for r in results["rows"]]
    assert kinds == [("dit", 1.0, 0.0), ("dit", 4.0, 0.0), ("dit", 0.0, 0.0), ("dit", 0.0, 10.0),
                     ("dit", 4.0, 10.0), ("sd", 7.5, 0.0), ("sd", 7.5, 10.0)]
    assert all(r["n"] == 12 and 0 <= r["accuracy"] <= 1 for r in results["rows"])
    assert results["rows"][0]["p_classifier"] is None and results["rows"][3]["p_classifier"] is not None
    assert list(results["classifier_accuracy_by_t"]) == list(NOISE_LEVELS)


def test_a_missing_text_model_skips_the_text_rows(lab_models, small, tmp_path, capsys):
    results = eval_class.report(12, 1, dit=str(lab_models / "dit"), classifier=str(lab_models / "classifier"),
                                sd=str(tmp_path / "no-model"), eval_n=0)
    assert {r["kind"] for r in results["rows"]} == {"dit"} and results["classifier_accuracy_by_t"] == {}
    assert "skipping the text rows" in capsys.readouterr().out


@pytest.mark.slow
def test_the_shipped_dit_draws_the_asked_shape(monkeypatch):
    monkeypatch.setattr(eval_class, "CFG_SCALES", (4.0,))
    monkeypatch.setattr(eval_class, "CLASSIFIER_SCALES", (0.0,))
    monkeypatch.setattr(eval_class, "CFG_UNDER_CLASSIFIER", ())
    results = eval_class.report(48, 10, sd=None, eval_n=48)
    cfg4, unconditional = results["rows"]
    assert cfg4["cfg"] == 4.0 and cfg4["accuracy"] >= 0.7 > unconditional["accuracy"] + 0.3  # chance is 1/6
    assert results["classifier_accuracy_by_t"][0] >= 0.8
