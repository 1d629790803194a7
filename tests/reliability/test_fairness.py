"""Fair, bounded work: an over-budget request is refused at once, a run whose client leaves or presses Stop is
cancelled between denoising steps, freeing the worker, and a run belongs to a client that reads its result."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from types import SimpleNamespace

import pytest
import requests
from gradio_client import Client
from gradio_client.exceptions import AppError

from ui import fairness

from .conftest import _http_message, is_one_sentence, raw_call


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


# A run belongs to a connected client: jobs that nobody reads never hold the worker and are dropped, a session holds
# one job and an address a few (ui/fairness.py).

FLOOD = 16  # the queue's size: a stranger's POSTs that nobody reads fill it
HEAVY = dict(prompt="a red circle", steps=40, num_images=8)  # a flood job: one of them is many small runs


def _post(url: str, data: list, address: str) -> requests.Response:
    """POST a /text2img call and never read its stream, as from `address` (the test's loopback peer is a proxy
    that uvicorn trusts, so the address it forwards is the client's)."""
    return requests.post(f"{url}gradio_api/call/text2img", data=json.dumps({"data": data}), timeout=30,
                         headers={"Content-Type": "application/json", "X-Forwarded-For": address})


def _read(url: str, answer: requests.Response) -> str:
    """The event stream of an accepted call, opened now."""
    return requests.get(f"{url}gradio_api/call/text2img/{answer.json()['event_id']}", timeout=60).text


def _late_answer(url: str, answer: requests.Response) -> str:
    """The sentence that the stream of a dropped call ends with."""
    return json.loads(_read(url, answer).rsplit("event: error\ndata: ", 1)[1].split("\n", 1)[0])["error"]


def _queue_empties(url: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while requests.get(f"{url}gradio_api/queue/status", timeout=30).json()["queue_size"]:
        assert time.monotonic() < deadline, "the unread jobs were not dropped"
        time.sleep(0.1)


def test_a_flood_of_unread_jobs_delays_a_connected_request_by_at_most_one_run(url, monkeypatch):
    monkeypatch.setenv("LAB_MAX_WORK_S", "100000")
    monkeypatch.setenv("LAB_STREAM_WAIT_S", "2")
    person = Client(url, verbose=False)
    person.predict(**HEAVY, api_name="/text2img")  # the first run of a batch size traces its graphs
    start = time.monotonic()
    person.predict(**HEAVY, api_name="/text2img")
    one_run = time.monotonic() - start
    start = time.monotonic()
    person.predict("a blue square", steps=2, api_name="/text2img")
    idle = time.monotonic() - start  # a small run and the queue's overhead

    heavy = _data(url, "text2img", **HEAVY)
    flood = [_post(url, heavy, f"198.51.100.{k}") for k in range(FLOOD)]  # sixteen strangers fill the queue
    assert [answer.status_code for answer in flood] == [200] * FLOOD
    start = time.monotonic()
    person.predict("a blue square", steps=2, api_name="/text2img")
    flooded = time.monotonic() - start
    assert flooded < idle + one_run, (idle, one_run, flooded)

    _queue_empties(url, within_s=10)  # 2 s after their calls, give or take the watch
    assert "to make room in the full queue" in _late_answer(url, flood[0])  # the oldest, for the person's request
    late = _late_answer(url, flood[-1])
    assert is_one_sentence(late) and "not opened within 2 s" in late


def test_an_address_holds_a_few_jobs_and_a_session_one(url, monkeypatch):
    monkeypatch.setenv("LAB_MAX_WORK_S", "100000")
    small = _data(url, "text2img", prompt="a blue square", steps=2)
    answers = [_post(url, small, "203.0.113.7") for _ in range(FLOOD)]
    held = [a for a in answers if a.status_code == 200]
    assert len(held) == fairness.RUNS_PER_ADDRESS
    for refused in answers[len(held):]:
        message = _http_message(refused)
        assert refused.status_code == 400 and is_one_sentence(message), message
        assert message.startswith(f"Your address already has {fairness.RUNS_PER_ADDRESS} runs in progress")
    again = []
    for answer in held:  # read at once, they run, and free the address as they end
        assert "event: complete" in _read(url, answer)
        again.append(_post(url, small, "203.0.113.7"))
    assert all("event: complete" in _read(url, answer) for answer in again)

    person = Client(url, verbose=False)
    first = person.submit("a red circle", steps=300, num_images=8, api_name="/text2img")
    deadline = time.monotonic() + 60
    while first.status().code.name not in ("PROCESSING", "PROGRESS", "ITERATING") and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(AppError, match=re.escape(fairness.ALREADY_RUNNING)):
        person.predict("a blue square", steps=2, api_name="/text2img")
    first.cancel()


@pytest.mark.parametrize("peer, trusted, client", [
    ("10.1.2.3", [ipaddress.ip_network("10.0.0.0/8")], "203.0.113.5"),  # a trusted proxy: the leftmost address
    ("192.0.2.9", [ipaddress.ip_network("10.0.0.0/8")], "192.0.2.9"),  # anyone else: the peer, whatever it says
    ("192.0.2.9", [], "192.0.2.9"),
    ("192.0.2.9", None, "203.0.113.5"),  # every peer trusted
])
def test_a_client_address_is_forwarded_only_by_a_trusted_proxy(peer, trusted, client):
    request = SimpleNamespace(client=SimpleNamespace(host=peer),
                              headers={"x-forwarded-for": "203.0.113.5, 10.9.9.9"})
    assert fairness.forwarded_address(request, trusted) == client
    assert fairness.forwarded_address(SimpleNamespace(client=SimpleNamespace(host=peer), headers={}), trusted) == peer


def test_trusted_proxies_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("LAB_TRUSTED_PROXIES", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert fairness.trusted_proxies() == []
    monkeypatch.setenv("SPACE_ID", "someone/guidance-lab")
    assert fairness.trusted_proxies() is None  # a Space is reached only through its proxy
    monkeypatch.setenv("LAB_TRUSTED_PROXIES", "10.0.0.0/8, 172.16.0.1")
    assert fairness.trusted_proxies() == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("172.16.0.1")]
    monkeypatch.setenv("LAB_TRUSTED_PROXIES", "proxy.local")
    with pytest.raises(ValueError, match="not an address or a network"):
        fairness.trusted_proxies()
