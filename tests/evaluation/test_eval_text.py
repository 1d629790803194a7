"""The text-to-image evaluation: which scenes each row asks for, and a report end to end."""

import pytest

from evaluation import eval_text
from world import is_held_out


@pytest.mark.parametrize("kind, objects, held", [("single", 1, False), ("held-out", 1, True), ("two", 2, None)])
def test_each_row_asks_for_its_kind_of_scene(kind, objects, held):
    scenes = eval_text.scenes(kind, 40, seed=1)
    assert len(scenes) == 40 // eval_text.PER_CAPTION
    assert all(len(s.objects) == objects for s in scenes)
    if held is not None:
        assert all(any(is_held_out(o) for o in s.objects) == held for s in scenes)
    assert scenes == eval_text.scenes(kind, 40, seed=1)  # seeded


def test_the_report_scores_every_row(lab_models, tmp_path, capsys):
    eval_text.main(["--model", str(lab_models / "sd"), "--n", "4", "--steps", "2", "--scales", "1",
                    "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert "captions  scale    n  colour" in out
    rows = __import__("json").loads((tmp_path / "rows.json").read_text())
    assert [(r["kind"], r["scale"]) for r in rows] == [("single", 7.5), ("held-out", 7.5), ("two", 7.5),
                                                      ("single", 1.0)]
    assert all(r["n"] == 4 and 0 <= r["colour"] <= 1 and 0 <= r["saturation"] <= 1 for r in rows)
    assert rows[0]["both"] is None and rows[2]["both"] is not None  # "both objects" only scores two-object rows


@pytest.mark.slow
def test_the_shipped_lab_sd_follows_its_captions():
    rows = eval_text.text_report("lab-sd", 12, 10, [])
    single = rows[0]
    assert single["kind"] == "single" and single["colour"] >= 0.8 and single["shape"] >= 0.8 and single["all"] >= 0.6
