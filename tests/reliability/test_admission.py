"""The work budget admits the default request of every tab, always: on a fresh app, after a slow run and with a
meter whose prices are far too high; bigger requests are refused then, in one sentence. A run that overruns its
budget stops at twice it and keeps what it has, saying so."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace

import pytest
import requests

from engine.compare import DEFAULT_ROWS, DEFAULT_SCALES, estimate_seconds
from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.meter import Meter
from engine.models.registry import available_offline
from engine.request import ControlSpec, Request
from ui.streaming import check_budget

from .conftest import is_one_sentence, raw_call, upload
from .test_fairness import _data

TABS = ("text2img", "class_cond", "controlnet", "compare")


@pytest.fixture
def engine(lab_app, monkeypatch):
    """The app's engine with a meter of its own for the test (its calibrations read from the cache file), under
    the app's default budget."""
    engine = lab_app[1]
    monkeypatch.setattr(engine, "meter", Meter(engine.meter.cache))
    monkeypatch.setenv("LAB_MAX_WORK_S", "30")
    return engine


def _defaults(url: str, sketch_file) -> dict[str, list]:
    """Each tab's default request as the API takes it (the ControlNet tab's with a drawn sketch, its one input)."""
    return {api: _data(url, api, **({"control_image": upload(url, sketch_file)} if api == "controlnet" else {}))
            for api in TABS}


def _admitted(url: str, defaults: dict[str, list]) -> None:
    for api, data in defaults.items():
        kind, answer = raw_call(url, api, data)
        assert kind == "complete", (api, answer)


def _refused(url: str) -> str:
    kind, answer = raw_call(url, "text2img", _data(url, "text2img", num_images=8, steps=400))
    assert kind == "error" and is_one_sentence(answer), answer
    return answer


def test_every_tabs_default_request_is_admitted_on_a_fresh_app(engine, url, sketch_file):
    _admitted(url, _defaults(url, sketch_file))


def test_every_tabs_default_request_is_admitted_after_a_slow_run(engine, url, sketch_file, monkeypatch):
    defaults = _defaults(url, sketch_file)
    _admitted(url, defaults)  # measured
    monkeypatch.setattr(engine.meter, "slowdown", lambda path: (300.0, 300.0))  # every recent run 300 times slow
    _admitted(url, defaults)
    answer = _refused(url)
    assert "limit is 30 s" in answer and "the machine is busy" in answer


def test_every_tabs_default_request_is_admitted_with_an_inflated_meter(engine, url, sketch_file):
    defaults = _defaults(url, sketch_file)
    _admitted(url, defaults)
    engine.meter.inflate(1000.0)  # as if every model had been measured on a machine a thousand times slower
    _admitted(url, defaults)
    assert "limit is 30 s" in _refused(url)


def _page_call(url: str, api: str, data: list) -> list[dict]:
    """Call an endpoint the way the page does (join the queue, read the session's stream): its messages."""
    config = requests.get(f"{url}config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api)
    session = uuid.uuid4().hex
    requests.post(f"{url}gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session},
                  timeout=30).raise_for_status()
    messages = []
    with requests.get(f"{url}gradio_api/queue/data", params={"session_hash": session}, stream=True,
                      timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith(b"data: "):
                messages.append(json.loads(line[6:]))
                if messages[-1].get("msg") == "process_completed":
                    return messages
    return messages


def test_a_run_over_its_budget_stops_at_twice_it_and_shows_what_it_has(engine, url, monkeypatch):
    monkeypatch.setenv("LAB_MAX_WORK_S", "0.5")
    _admitted(url, {"text2img": _data(url, "text2img", steps=2)})  # measured
    engine.meter.inflate(1e-6)  # estimates far below the run: it is admitted, and overruns
    start = time.monotonic()
    messages = _page_call(url, "text2img", _data(url, "text2img", steps=500, num_images=4))
    assert time.monotonic() - start < 1.0 + 5.0  # twice the budget, a last step and the decode, on shared cores
    done = messages[-1]
    assert done["msg"] == "process_completed" and done["success"], done
    assert len(done["output"]["data"][0]) == 4  # the partial result: each image's estimate at the step reached
    (warning,) = [m["log"] for m in messages if m.get("msg") == "log"]
    assert is_one_sentence(warning) and warning.startswith("The run was stopped after ")
    assert "of 500 steps, at twice the 0.5 s work budget" in warning


# The project's own models, as `python app.py` serves them on a CPU.

PROMPT = "a large red circle on the left on a white background"


def _project_defaults(engine: Engine):
    """(name, estimate) of each tab's default request on the project's models."""
    from PIL import Image

    text = Request(model="lab-sd", prompt=PROMPT, guidance=GuidanceSettings("cfg", 5.0))
    sketch = Image.new("RGB", (64, 64), "white")
    yield "text2img", engine.estimate_seconds(text)
    yield "class_cond", engine.estimate_seconds(Request(model="lab-dit", class_label="circle",
                                                        classifier="lab-classifier",
                                                        guidance=GuidanceSettings("cfg", 4.0)))
    yield "controlnet", engine.estimate_seconds(replace(text, controls=(ControlSpec(sketch, "scribble"),)))
    yield "compare", estimate_seconds(engine, text, DEFAULT_ROWS, DEFAULT_SCALES, 3)


@pytest.mark.skipif(len(available_offline()) < 6, reason="the project's models are not all here")
def test_the_project_models_defaults_are_admitted_here_however_busy(monkeypatch):
    engine = Engine()  # its calibration: measured on this machine, or read from its cache file
    for name, estimate in _project_defaults(engine):
        check_budget(estimate, 30.0)
        assert estimate.default_s is not None, name
    monkeypatch.setattr(engine.meter, "slowdown", lambda path: (300.0, 300.0))
    for name, estimate in _project_defaults(engine):
        check_budget(estimate, 30.0)
    engine.meter.inflate(1000.0)
    for name, estimate in _project_defaults(engine):
        check_budget(estimate, 30.0)
    big = Request(model="lab-sd", prompt=PROMPT, num_images=8, steps=300, guidance=GuidanceSettings("cfg", 5.0))
    with pytest.raises(EngineError, match="limit is 30 s"):
        check_budget(engine.estimate_seconds(big), 30.0)
    sdxl = replace(big, model="sdxl")  # never measured on a CPU: priced by its parameters, refused
    with pytest.raises(EngineError, match="limit is 30 s"):
        check_budget(Engine().estimate_seconds(sdxl), 30.0)
