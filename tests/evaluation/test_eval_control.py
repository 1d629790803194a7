"""The ControlNet evaluation: every column scored, and the report's rows."""

import pytest

from evaluation import eval_control
from engine.generate import Engine


@pytest.mark.parametrize("control_type", ["canny", "pose"])
def test_a_row_scores_every_column(lab_models, control_type):
    row = eval_control.run(Engine(), control_type, str(lab_models / "controlnet"), model=str(lab_models / "sd"),
                           n=4, control_scale=1.0, per_condition=2, steps=2, cfg=5.0)
    assert row["n"] == 4 and (row["pose_hit"] is None) == (control_type != "pose")
    assert all(0 <= row[c] <= 1 for c in ("edge_f1", "precision", "recall", "colour"))


def test_the_report_has_a_row_per_type_and_scale(lab_models, capsys):
    rows = eval_control.report(["scribble"], str(lab_models / "controlnet"), model=str(lab_models / "sd"), n=2,
                               scales=[1.0, 0.0], per_condition=2, steps=1)
    assert [(r["type"], r["control_scale"]) for r in rows] == [("scribble", 1.0), ("scribble", 0.0)]
    assert " control  scale    n   edge_f1" in capsys.readouterr().out


@pytest.mark.slow
def test_the_shipped_canny_controlnet_follows_its_edges():
    rows = eval_control.report(["canny"], "lab-controlnet-{}", model="lab-sd", n=16, scales=[1.0, 0.0],
                               per_condition=4, steps=10)
    controlled, base = rows
    assert controlled["edge_f1"] > base["edge_f1"] + 0.2 and controlled["edge_f1"] >= 0.7
