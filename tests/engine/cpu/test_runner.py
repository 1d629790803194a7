"""The model thread: every call from any thread runs on one thread the engine owns, results and errors unchanged."""

import gc
import threading

import pytest

from engine.errors import EngineError
from engine.generate import Engine
from engine.request import Request
from engine.cpu.runner import Inline, ModelThread


def test_calls_from_any_thread_run_on_one_model_thread_with_results_and_errors():
    runner = ModelThread()
    seen, errors = [], []
    problem = ValueError("bad input")

    def fail():
        raise problem

    def client():
        seen.append(runner.call(threading.current_thread))
        try:
            runner.call(fail)
        except ValueError as exc:
            errors.append(exc)

    workers = [threading.Thread(target=client) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seen.append(runner.call(threading.current_thread))
    assert seen == [runner.thread] * 4 and runner.thread is not threading.main_thread()
    assert errors == [problem] * 3  # the very exception object raised on the model thread
    assert runner.call(lambda a, b=0: a + b, 2, b=3) == 5
    runner.close(wait=True)


def test_calls_from_the_model_thread_itself_run_inline():
    runner = ModelThread()
    inner = runner.call(lambda: runner.call(threading.current_thread))
    assert inner is runner.thread
    runner.close(wait=True)


def test_close_ends_the_thread_and_a_later_call_starts_another():
    runner = ModelThread()
    first = runner.call(threading.current_thread)
    runner.close(wait=True)
    assert not first.is_alive() and runner.thread is None
    second = runner.call(threading.current_thread)
    assert second is not first and second.is_alive()
    runner.close(wait=True)


def test_inline_runs_on_the_callers_thread():
    assert Inline().call(threading.current_thread) is threading.current_thread()


def test_engine_work_runs_on_its_model_thread_and_ends_with_the_engine(tiny_folders):
    engine = Engine()
    ran_on = []
    original = engine._generate
    engine._generate = lambda *args: ran_on.append(threading.current_thread()) or original(*args)
    req = Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=2)
    engine.generate(req)
    worker = threading.Thread(target=engine.generate, args=(req,))
    worker.start()
    worker.join()
    thread = engine.runner.thread
    assert ran_on == [thread, thread] and thread is not threading.main_thread()
    del engine, original
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_engine_errors_reach_the_caller_unchanged(tiny_folders):
    engine = Engine()
    with pytest.raises(EngineError, match="number of images"):
        engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=2, num_images=0))
    assert engine.runner.thread.is_alive()  # the thread outlives a failed call


def test_delegated_workers_call_inline_while_the_model_thread_waits_on_them():
    from concurrent.futures import ThreadPoolExecutor

    runner = ModelThread()
    with ThreadPoolExecutor(1) as pool:
        def fan_out():
            def work():
                with runner.delegated():
                    return runner.call(threading.current_thread)  # queued behind fan_out, this would never run
            return pool.submit(work).result(timeout=10)

        worker = runner.call(fan_out)
    assert worker is not runner.thread and worker.name.startswith("ThreadPoolExecutor")
    assert runner.call(threading.current_thread) is runner.thread  # the flag ends with the block
    other = ModelThread()
    with runner.delegated():
        assert other.call(threading.current_thread) is other.thread  # another engine's thread is not delegated to
    other.close(wait=True)
    runner.close(wait=True)
    with Inline.delegated():
        assert Inline().call(threading.current_thread) is threading.current_thread()
