"""Stop ends the runs of the page session that pressed it and no other."""

import threading
from types import SimpleNamespace

from engine.generate import Stopped
from ui.streaming import in_background, stop_runs


def _run_until_cancelled(started: threading.Event):
    def work(report, cancel):
        started.set()
        step = 0
        while not cancel.wait(0.01):
            report({"i": step, "num_steps": 200})
            step += 1
        raise Stopped("cancelled")

    return work


def test_stop_ends_only_the_pressing_sessions_runs():
    mine, theirs = SimpleNamespace(session_hash="mine"), SimpleNamespace(session_hash="theirs")
    started = [threading.Event(), threading.Event()]
    my_run = in_background(_run_until_cancelled(started[0]), mine, poll_s=0.05)
    their_run = in_background(_run_until_cancelled(started[1]), theirs, poll_s=0.05)
    assert next(my_run) == ("tick", None) and next(their_run) == ("tick", None)
    assert all(s.wait(5) for s in started)

    stop_runs(mine)
    assert list(my_run) in ([], [("tick", None)])  # ends (with a notice), without raising, within a poll or two
    for _ in range(5):
        assert next(their_run) == ("tick", None)  # still running
    their_run.close()


def test_stop_from_a_session_with_nothing_running_is_harmless():
    stop_runs(SimpleNamespace(session_hash="idle"))
    stop_runs(SimpleNamespace(session_hash=None))
    stop_runs(None)
