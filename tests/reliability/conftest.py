"""Raw HTTP calls against the app served on the tiny models, the way a stranger on a public Space would make them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import requests
from PIL import Image

# What an answer must never contain: a traceback, a Python source location, or a server path.
LEAKS = re.compile(r"Traceback|File \"|site-packages|/tmp/|/root|/work/|/home/|/etc/|/usr/|\.py\b")


def raw_call(url: str, api: str, data: list, timeout: float = 120) -> tuple[str, object]:
    """POST to Gradio's call route, read the event stream: ("complete", outputs) or ("error", message)."""
    r = requests.post(f"{url}gradio_api/call/{api}", data=json.dumps({"data": data}, allow_nan=True),
                      headers={"Content-Type": "application/json"}, timeout=timeout)
    if r.status_code != 200:
        return "error", _http_message(r)
    event_id = r.json()["event_id"]
    stream = requests.get(f"{url}gradio_api/call/{api}/{event_id}", timeout=timeout).text
    kind, payload = "error", None
    for block in stream.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        kind, payload = lines.get("event", kind), lines.get("data", payload)
    if kind == "error":
        message = json.loads(payload).get("error") if payload and payload != "null" else None
        return "error", message
    return kind, json.loads(payload) if payload else None


def _http_message(r: requests.Response) -> str:
    try:
        detail = r.json().get("detail", r.text)
    except ValueError:
        detail = r.text
    return detail if isinstance(detail, str) else json.dumps(detail)


def is_one_sentence(message) -> bool:
    """A non-empty single line of at most 300 characters that leaks nothing (the caller's own input, which the
    messages quote, is not a leak)."""
    if not isinstance(message, str) or not 0 < len(message) <= 300 or "\n" in message:
        return False
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "''", message)
    return not LEAKS.search(unquoted)


def upload(url: str, path) -> dict:
    """Upload a file the way gradio_client does; the FileData payload that refers to it."""
    with open(path, "rb") as handle:
        r = requests.post(f"{url}gradio_api/upload", files={"files": handle}, timeout=60)
    r.raise_for_status()
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="session")
def url(lab_app):
    return lab_app[0]


@pytest.fixture(scope="session")
def sketch_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "sketch.png"
    canvas = np.full((64, 64, 3), 255, np.uint8)
    canvas[20:44, 30:34] = 0
    Image.fromarray(canvas).save(path)
    return path
