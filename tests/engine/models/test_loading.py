"""Models load once per (model, device, dtype), thread-safely, and stay within a memory budget, least recently used
leaving first; unreachable hub ids fail with one sentence."""

import threading
import weakref

import pytest
import torch

from engine.errors import EngineError
from engine.models import loading
from engine.models.loading import ModelStore, memory_budget
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


def _loaded_sizes(tiny_folders) -> dict[str, int]:
    """Bytes each tiny model takes once loaded, by folder key."""
    store = ModelStore(budget=0)
    kinds = {"sd": "text", "dit": "class", "controlnet": "controlnet"}
    return {name: store.get(resolve(str(tiny_folders[name]), kind)).nbytes for name, kind in kinds.items()}


def _specs(tiny_folders):
    return (resolve(str(tiny_folders["sd"]), "text"), resolve(str(tiny_folders["dit"]), "class"),
            resolve(str(tiny_folders["controlnet"]), "controlnet"))


def test_the_least_recently_used_model_leaves_past_the_budget(tiny_folders):
    sizes = _loaded_sizes(tiny_folders)
    sd, dit, net = _specs(tiny_folders)
    store = ModelStore(budget=sizes["sd"] + sizes["dit"] + sizes["controlnet"] // 2)
    first = weakref.ref(store.get(sd).obj)
    store.get(net)
    store.get(sd)  # used again: the ControlNet is now the least recently used
    assert store.loads == 2 and store.evictions == 0
    store.get(dit)
    assert store.loaded_sources() == [sd.source, dit.source] and store.evictions == 1
    assert store.peek(net) is None and first() is not None and store.loaded_bytes() <= store.budget
    store.get(net)  # back: the text pipeline, least recently used now, leaves and is freed
    assert store.loaded_sources() == [dit.source, net.source] and store.loads == 4 and first() is None


def test_kept_models_and_those_a_run_holds_are_never_dropped(tiny_folders):
    sizes = _loaded_sizes(tiny_folders)
    sd, dit, net = _specs(tiny_folders)
    store = ModelStore(budget=max(sizes.values()))
    store.keep([sd])
    store.get(sd)
    held = store.get(net).obj  # a running request's ControlNet
    store.get(dit)
    assert set(store.loaded_sources()) == {sd.source, net.source, dit.source} and store.evictions == 0
    assert store.get(net).obj is held and store.loads == 3  # never loaded twice
    del held
    store.get(net)
    store.get(dit)  # the ControlNet, no longer held, is now the least recently used one not kept
    store.get(sd)
    store.get(resolve(str(tiny_folders["controlnet2"]), "controlnet"))
    assert sd.source in store.loaded_sources() and net.source not in store.loaded_sources()


def test_a_model_a_running_request_uses_stays_loaded_through_its_run(tiny_folders):
    from engine.generate import Engine
    from engine.request import Request

    sizes = _loaded_sizes(tiny_folders)
    sd, dit, _ = _specs(tiny_folders)
    engine = Engine(ModelStore(budget=max(sizes.values())))
    seen = []

    def step(info):  # mid-run, another model is asked for (as a second request's load would be)
        if info["i"] == 0:
            seen.append(engine.loaded(dit) is not None)
            seen.append(engine.store.peek(sd) is not None)

    result = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=3), callback=step)
    assert result.images and seen == [True, True] and engine.store.loads == 2
    engine.loaded(resolve(str(tiny_folders["controlnet"]), "controlnet"))  # the run is over: the oldest may leave
    assert sd.source not in engine.store.loaded_sources() and engine.store.evictions >= 1


@pytest.mark.parametrize("setting, expected", [("800M", 800 * 2**20), ("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29),
                                               ("123456", 123456)])
def test_the_budget_is_a_size_or_a_share(setting, expected):
    assert memory_budget(torch.device("cpu"), setting) == expected


def test_the_budget_share_is_of_the_memory_available_at_start(monkeypatch):
    monkeypatch.setattr(loading, "available_ram_bytes", lambda: 8 * 2**30)
    assert memory_budget(torch.device("cpu"), "0.25") == 2 * 2**30
    assert memory_budget(torch.device("cpu"), "") == int(8 * 2**30 * loading.BUDGET_SHARE["cpu"])
    monkeypatch.setenv("LAB_MODEL_MEMORY", "0.5")
    assert ModelStore(torch.device("cpu")).budget == 4 * 2**30
    monkeypatch.setattr(loading, "available_ram_bytes", lambda: None)
    assert memory_budget(torch.device("cpu"), "0.5") is None  # nothing to take a share of: no budget
    with pytest.raises(EngineError, match="a share such as 0.5 or a size such as 6G, not 'lots'"):
        memory_budget(torch.device("cpu"), "lots")


def test_size_and_class_names_are_read_without_loading(tiny_folders):
    from engine.generate import Engine

    engine = Engine(ModelStore(), model_thread=False)
    sd, dit, _ = _specs(tiny_folders)
    size, names = engine.store.native_size(sd), engine.store.class_names(dit)
    assert engine.store.loads == 0 and names == ["circle", "square", "triangle"]
    assert size == engine.native_size(str(tiny_folders["sd"]))  # what the loaded pipeline says
    assert names == engine.class_names(engine.loaded(dit)) == engine.store.class_names(dit)
    assert loading.native_size(resolve("sdxl", "text")) == (1024, 1024)  # a hub model: its registry size
    assert loading.class_names(resolve("no-such-org/no-such-dit", "class")) == []  # not cached: never fetched
