"""Bounded memory: a soak of ordinary requests from many sessions ends near where it started (after a warm-up),
and an oversized upload is refused from its header without being decoded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from gradio_client import Client, handle_file
from PIL import Image

from ui.storage import PARENT

SESSIONS = 50
REQUESTS = 1000
WARM_UP = 100
CALLERS = 8  # requests in flight at once: inside the queue's 16 places


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _ordinary(client: Client, n: int):
    """One of the calls a person makes: mostly text-to-image, some previews, a class image, a small grid."""
    kind = n % 10
    if kind == 9:
        return client.predict("circle", steps=2, api_name="/class_cond")
    if kind == 8:
        return client.predict("a red circle", scales="1, 5", seeds=1, methods=["CFG"], steps=2, api_name="/compare")
    if kind == 7:
        return client.predict("[[0.5, 0.1]" + ", [0.5, 0.2]" * 17 + "]", None, api_name="/preview_pose")
    return client.predict(f"a red circle {n}", steps=2, seed=n, api_name="/text2img")


@pytest.fixture
def served_app(tiny_root, tmp_path):
    """`python app.py` in a process of its own on the tiny models, so its memory is the server's alone."""
    port = _free_port()
    env = {**os.environ, "LAB_MODEL_DIR": str(tiny_root), "GRADIO_SERVER_PORT": str(port), "LAB_STEPS": "2"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "app.py"], cwd=Path(__file__).resolve().parents[2], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                break
        except requests.ConnectionError:
            time.sleep(1)
    yield url, server.pid
    server.terminate()
    server.wait(30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_of_many_sessions_stays_within_100_mb(served_app):
    url, pid = served_app
    clients = [Client(url, verbose=False) for _ in range(SESSIONS)]
    for n in range(WARM_UP):
        _ordinary(clients[n % SESSIONS], n)
    start = rss_mb(pid)
    errors: list[BaseException] = []
    todo = iter(range(REQUESTS))
    lock = threading.Lock()

    def worker() -> None:  # a few callers at a time, each request from the next of the 50 sessions
        while True:
            with lock:
                n = next(todo, None)
            if n is None:
                return
            try:
                _ordinary(clients[n % SESSIONS], n)
            except BaseException as exc:  # reported below
                errors.append(exc)

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = rss_mb(pid)
    folder = next(PARENT.glob(f"{pid}-*"))
    disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    print(f"\nsoak: {REQUESTS} requests from {SESSIONS} sessions ({CALLERS} at a time) in "
          f"{time.monotonic() - began:.0f} s; server resident memory {start:.0f} MB after {WARM_UP} warm-up "
          f"requests, {end:.0f} MB at the end ({end - start:+.0f} MB); app folder {disk:.1f} MB; "
          f"errors {len(errors)}")
    assert not errors, errors[:3]
    assert end - start < 100


def test_oversized_upload_is_refused_without_decoding(client, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(huge)  # 144 megapixels declared, a few hundred KB on disk
    before = rss_mb()
    for _ in range(5):
        with pytest.raises(Exception, match="16 megapixels"):
            client.predict(handle_file(str(huge)), None, 100, 200, api_name="/preview_canny")
    assert rss_mb() - before < 50  # decoding even once would take 400 MB
