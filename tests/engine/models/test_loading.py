"""Models load once per (model, device, dtype), thread-safely; unreachable hub ids fail with one sentence."""

import threading

import pytest

from engine.errors import EngineError
from engine.models.loading import ModelStore
from engine.models.registry import resolve


def test_loads_once_under_concurrent_first_requests(tiny_folders):
    store = ModelStore()
    spec = resolve(str(tiny_folders["sd"]), "text")
    results, barrier = [], threading.Barrier(4)

    def worker():
        barrier.wait()
        results.append(store.get(spec).obj)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.loads == 1
    assert all(r is results[0] for r in results)


def test_folder_kinds_are_detected(tiny_folders):
    assert resolve(str(tiny_folders["sd"])).kind == "text"
    assert resolve(str(tiny_folders["dit"])).kind == "class"
    assert resolve(str(tiny_folders["controlnet"])).kind == "controlnet"
    with pytest.raises(EngineError, match="is a class model"):
        resolve(str(tiny_folders["dit"]), "text")


def test_unreachable_hub_id_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = ModelStore()
    with pytest.raises(EngineError) as info:
        store.get(resolve("no-such-org/no-such-model", "text"))
    message = str(info.value)
    assert "could not be fetched" in message and "offline models" in message and "\n" not in message


def test_unknown_names_are_refused():
    with pytest.raises(EngineError, match="Unknown model 'nonsense'"):
        resolve("nonsense")
