"""Bounded disk: one copy of each output in the app's own folder, swept by age, by a quota per session and by total
size (the largest sessions' oldest files first); nothing another instance left behind is served, and an upload over
the size limit is refused before it is written."""

from __future__ import annotations

import os
import time

import requests

from ui.storage import UNCLAIMED, Storage, remove_stale

from .conftest import is_one_sentence, raw_call, upload


def test_sweep_keeps_the_folder_under_its_cap_and_age(tmp_path):
    store = Storage(parent=tmp_path, max_age_s=3600, max_bytes=10_000)
    for n in range(8):
        path = store.folder / f"f{n}.bin"
        path.write_bytes(b"x" * 2_000)
        os.utime(path, (time.time() - 100 + n, time.time() - 100 + n))
    old = store.folder / "old.bin"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    store.sweep()
    names = sorted(p.name for _, _, p in store.files())
    assert store.size() <= 10_000 and "old.bin" not in names
    assert names == [f"f{n}.bin" for n in range(3, 8)]  # the newest kept


def _file(store: Storage, name: str, size: int, age_s: float = 0.0):
    path = store.folder / name
    path.write_bytes(os.urandom(size))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return str(path)


def test_a_flood_costs_the_flood_and_never_another_sessions_fresh_files(tmp_path):
    store = Storage(parent=tmp_path, max_age_s=3600, max_bytes=50_000, session_bytes=30_000)
    theirs = [_file(store, f"out{n}.png", 3_000, age_s=600 - n) for n in range(3)]  # older than the flood
    store.claim("their-session", theirs)
    flood = [_file(store, f"up{n}.bin", 5_000, age_s=60 - n) for n in range(40)]  # 200 KB, unclaimed uploads
    store.sweep()
    left = {str(p) for _, _, p in store.files()}
    assert set(theirs) <= left  # every file of the session within its share stays
    assert store.size() <= 50_000
    assert flood[-1] in left and flood[0] not in left  # the flood lost its oldest uploads
    assert store.usage()[UNCLAIMED] <= 30_000


def test_the_largest_session_loses_its_oldest_files_first(tmp_path):
    store = Storage(parent=tmp_path, max_age_s=3600, max_bytes=20_000, session_bytes=10**9)
    small = [_file(store, f"small{n}.png", 2_000, age_s=900 - n) for n in range(3)]
    large = [_file(store, f"large{n}.png", 2_000, age_s=100 - n) for n in range(10)]
    shared = _file(store, "shared.png", 2_000, age_s=1000)  # the oldest file, sent to both
    store.claim("small", [*small, shared])
    store.claim("large", [*large, shared])
    store.sweep()
    left = {str(p) for _, _, p in store.files()}
    assert set(small) | {shared} <= left  # the small session keeps all it holds, the shared file with it
    assert large[-1] in left and large[0] not in left
    assert store.size() <= 20_000 and store.holders(shared) == {"small"}


def test_a_session_over_its_quota_loses_only_its_own_oldest_files(tmp_path):
    store = Storage(parent=tmp_path, max_age_s=3600, max_bytes=10**9, session_bytes=10_000)
    mine = [_file(store, f"m{n}.png", 3_000, age_s=100 - n) for n in range(6)]
    other = _file(store, "o.png", 3_000, age_s=500)
    store.claim("greedy", mine)
    store.claim("other", [other])
    store.sweep()
    left = {str(p) for _, _, p in store.files()}
    assert left == {other, *mine[3:]}


def test_a_flood_of_uploads_leaves_another_sessions_fresh_output_served(lab_app, url, sketch_file, tmp_path,
                                                                        monkeypatch):
    store = lab_app_storage(lab_app)
    store.sweep()
    monkeypatch.setattr(store, "max_bytes", store.size() + 2 * 2**20)
    monkeypatch.setattr(store, "session_bytes", 2**20)
    kind, outputs = raw_call(url, "preview_canny", [upload(url, sketch_file), None, 100, 200])
    assert kind == "complete"
    served = outputs[0]["url"]
    flood = tmp_path / "flood.bin"
    for n in range(24):  # 6 MB of uploads that no event uses, three times what the folder may grow by
        flood.write_bytes(os.urandom(256 * 1024))
        upload(url, flood)
    deadline = time.monotonic() + 10
    while store.size() > store.max_bytes and time.monotonic() < deadline:  # the uploads start a sweep
        time.sleep(0.2)
    assert store.size() <= store.max_bytes
    r = requests.get(served, timeout=30)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


def test_an_upload_over_the_size_limit_is_refused_in_one_sentence(lab_app, url, tmp_path):
    store = lab_app_storage(lab_app)
    before = store.size()
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(30 * 2**20))
    with open(big, "rb") as handle:
        r = requests.post(f"{url}gradio_api/upload", files={"files": handle}, timeout=120)
    assert r.status_code == 413 and is_one_sentence(r.text), (r.status_code, r.text[:300])
    assert store.size() <= before + 2**20  # nothing of it was kept


def test_folders_of_ended_instances_are_removed_at_start(tmp_path):
    ended = tmp_path / "999999999-deadbeef"
    ended.mkdir()
    (ended / "upload.png").write_bytes(b"x")
    remove_stale(tmp_path)
    assert not ended.exists()


def test_one_file_per_output_in_the_apps_own_folder(lab_app, url):
    store = lab_app_storage(lab_app)
    before = {p for _, _, p in store.files()}
    params = requests.get(f"{url}gradio_api/info", timeout=30).json()["named_endpoints"]["/text2img"]["parameters"]
    values = {p["parameter_name"]: p.get("parameter_default") for p in params}
    values.update(prompt="a red circle", steps=2, num_images=3)
    kind, outputs = raw_call(url, "text2img", [values[p["parameter_name"]] for p in params])
    assert kind == "complete"
    new = [p for p in {p for _, _, p in store.files()} - before if p.suffix == ".png"]
    finals = {item["image"]["path"] for item in outputs[0]}
    assert finals <= {str(p) for p in new}  # the three images, in the app's own folder
    assert len({p.read_bytes() for p in new}) == len(new)  # each picture (live previews too) written once


def test_another_instances_files_are_not_served(url, tmp_path):
    other = Storage(parent=tmp_path)
    secret = other.folder / "their-output.png"
    secret.write_bytes(b"\x89PNG not yours")
    r = requests.get(f"{url}gradio_api/file={secret}", timeout=30)
    assert r.status_code in (403, 404) and b"not yours" not in r.content


def lab_app_storage(lab_app) -> Storage:
    return lab_app[2].storage  # the served Blocks keeps its Storage
