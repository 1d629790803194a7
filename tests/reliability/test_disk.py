"""Bounded disk: one copy of each output in the app's own folder, swept by age and size; nothing another instance
left behind is served."""

from __future__ import annotations

import os
import time

import requests

from ui.storage import Storage, remove_stale

from .conftest import raw_call


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
