"""The evaluation command: a task name, then that task's own options."""

import pytest

from evaluation import evaluate


def test_each_task_gets_its_own_options(monkeypatch):
    called = []
    for task in evaluate.TASKS:
        monkeypatch.setitem(evaluate.TASKS, task, type("Task", (), {"main": staticmethod(
            lambda argv, task=task: called.append((task, argv)))}))
    evaluate.main(["text", "--n", "12", "--scales", "1", "15"])
    evaluate.main(["class", "--n", "12"])
    evaluate.main(["control", "--types", "canny"])
    assert called == [("text", ["--n", "12", "--scales", "1", "15"]), ("class", ["--n", "12"]),
                      ("control", ["--types", "canny"])]


def test_an_unknown_task_is_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["depth", "--n", "12"])
    assert "invalid choice: 'depth' (choose from 'text', 'class', 'control')" in capsys.readouterr().err
