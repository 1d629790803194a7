"""The main-thread runner: calls from other threads run on the serving (main) thread, inline otherwise."""

import threading

import pytest

from engine.runner import MainThreadRunner


def test_inline_when_not_serving():
    runner = MainThreadRunner()
    seen = []
    worker = threading.Thread(target=lambda: seen.append(runner.call(threading.current_thread)))
    worker.start()
    worker.join()
    assert seen == [worker]


def test_calls_from_workers_run_on_the_serving_thread_with_results_and_errors():
    runner = MainThreadRunner()
    stop = threading.Event()
    results, errors = [], []

    def fail():
        raise ValueError("bad input")

    def client():
        try:
            runner.wait_serving()
            results.extend(runner.call(threading.current_thread) for _ in range(3))
            results.append(runner.call(lambda a, b=0: a + b, 2, b=3))
            try:
                runner.call(fail)
            except ValueError as exc:
                errors.append(str(exc))
        finally:
            stop.set()

    worker = threading.Thread(target=client)
    worker.start()
    runner.serve(stop, poll_s=0.01)
    worker.join()
    assert results[:3] == [threading.main_thread()] * 3 and results[3] == 5
    assert errors == ["bad input"]
    assert not runner.serving
    assert runner.call(lambda: 7) == 7  # inline again once serving stopped


def test_serve_only_on_the_main_thread():
    failures = []

    def try_serve():
        try:
            MainThreadRunner().serve(threading.Event())
        except RuntimeError as exc:
            failures.append(str(exc))

    worker = threading.Thread(target=try_serve)
    worker.start()
    worker.join()
    assert failures and "main thread" in failures[0]
