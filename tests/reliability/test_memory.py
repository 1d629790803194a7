"""Bounded memory: a soak of ordinary requests from many sessions ends near where it started (after a warm-up),
and an oversized upload is refused from its header without being decoded."""

from __future__ import annotations

import threading
import time

import pytest
from gradio_client import Client, handle_file
from PIL import Image

SESSIONS = 50
REQUESTS = 1000
WARM_UP = 100


def rss_mb() -> float:
    with open("/proc/self/status") as status:
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


@pytest.mark.slow
def test_soak_of_many_sessions_stays_within_100_mb(url, lab_app):
    clients = [Client(url, verbose=False) for _ in range(SESSIONS)]
    for n in range(WARM_UP):
        _ordinary(clients[n % SESSIONS], n)
    start = rss_mb()
    errors: list[BaseException] = []

    def session(k: int) -> None:
        try:
            for n in range(k, REQUESTS, SESSIONS):
                _ordinary(clients[k], n)
        except BaseException as exc:  # reported below
            errors.append(exc)

    began = time.monotonic()
    threads = [threading.Thread(target=session, args=(k,)) for k in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = rss_mb()
    files = lab_app[2].storage.size() / 2**20
    print(f"\nsoak: {REQUESTS} requests from {SESSIONS} sessions in {time.monotonic() - began:.0f} s; resident memory "
          f"{start:.0f} MB after {WARM_UP} warm-up requests, {end:.0f} MB at the end; app folder {files:.1f} MB")
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
