"""Fair, bounded work: an over-budget request is refused at once, and a run whose client leaves or presses Stop is
cancelled between denoising steps, freeing the worker."""

from __future__ import annotations

import json
import time

import requests

from .conftest import raw_call


def _data(url: str, api: str, **values) -> list:
    params = requests.get(f"{url}gradio_api/info", timeout=30).json()["named_endpoints"][f"/{api}"]["parameters"]
    defaults = {p["parameter_name"]: p.get("parameter_default") for p in params}
    defaults.update(values)
    return [defaults[p["parameter_name"]] for p in params]


def _timed_text2img(url: str) -> float:
    start = time.monotonic()
    kind, _ = raw_call(url, "text2img", _data(url, "text2img", prompt="a blue square", steps=2))
    assert kind == "complete"
    return time.monotonic() - start


def test_over_budget_compare_is_refused_and_the_next_request_starts_at_once(url, monkeypatch):
    monkeypatch.setenv("LAB_MAX_WORK_S", "30")
    scales = ", ".join(str(s) for s in range(1, 17))
    kind, answer = raw_call(url, "compare", _data(url, "compare", prompt="a red circle", scales=scales, seeds=8,
                                                  steps=150, methods=["CFG", "Perp-CFG", "APG", "CFG + rescale"]))
    assert kind == "error" and "limit is 30 s" in answer and "fewer" in answer
    start = time.monotonic()
    stream = _open_stream(url, _data(url, "text2img", prompt="a blue square", steps=2))
    next(line for line in stream.iter_lines() if line.startswith(b"event:"))  # its first update: it is running
    assert time.monotonic() - start < 2.0
    stream.close()


def _open_stream(url: str, data: list) -> requests.Response:
    """Submit a /text2img call and open its event stream."""
    event = requests.post(f"{url}gradio_api/call/text2img", data=json.dumps({"data": data}),
                          headers={"Content-Type": "application/json"}, timeout=30).json()["event_id"]
    return requests.get(f"{url}gradio_api/call/text2img/{event}", stream=True, timeout=60)


def _start_long_run(url: str) -> requests.Response:
    """A long run (300 steps, 8 images: many seconds) whose event stream is open; closing it is the client
    leaving."""
    stream = _open_stream(url, _data(url, "text2img", prompt="a red circle", steps=300, num_images=8))
    seen = []
    for line in stream.iter_lines():  # until the run has started and streams its previews
        seen.append(line)
        if b"generating" in line:
            return stream
    raise AssertionError(f"the long run never streamed: {seen}")


def test_a_departed_clients_run_stops_within_a_second(url, monkeypatch):
    monkeypatch.setenv("LAB_MAX_WORK_S", "100000")
    idle = _timed_text2img(url)
    stream = _start_long_run(url)
    stream.close()  # the client leaves
    waited = _timed_text2img(url)  # queued behind the long run until it stops
    assert waited < idle + 1.5, (idle, waited)


def test_stop_cancels_the_run(url, client, monkeypatch):
    monkeypatch.setenv("LAB_MAX_WORK_S", "100000")
    idle = _timed_text2img(url)
    job = client.submit("a red circle", steps=300, num_images=8, api_name="/text2img")
    deadline = time.monotonic() + 60
    while job.status().code.name not in ("PROCESSING", "PROGRESS", "ITERATING") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    job.cancel()  # what the page's Stop button sends (Gradio's /cancel closes the stream's generator)
    assert _timed_text2img(url) < idle + 3.0  # "a second or two", on 2 shared cores
