"""Every generation endpoint through gradio_client: images come back as PNGs carrying their parameters."""

import threading
import time

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from engine.pnginfo import parse_parameters

FAST = dict(steps=2)
ENDPOINTS = {"/text2img": "prompt", "/class_cond": "class_label", "/controlnet": "control_image", "/compare": "prompt"}


def png_parameters(path) -> dict:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return parse_parameters(image.info["parameters"])


def test_endpoints_need_only_their_main_input(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for endpoint, main in ENDPOINTS.items():
        params = api[endpoint]["parameters"]
        assert params[0]["parameter_name"] == main
        assert all(p["parameter_has_default"] for p in params[1:]), endpoint


def test_text2img_png_info_trajectory_and_attention(client, tiny_root):
    images, command, trajectory, attention = client.predict(
        "a red circle on the left", num_images=2, trajectory=True, attention=True, seed=7, api_name="/text2img",
        **FAST)
    assert [item["caption"] for item in images] == ["seed 7", "seed 8"]
    params = png_parameters(images[1]["image"])
    assert params["Prompt"] == "a red circle on the left" and params["Seed"] == "8" and params["Steps"] == "2"
    assert command.count("python -m engine generate") == 2 and "--seed 8" in command
    # Models from the server's folder are named as the dropdown names them; where that folder is never shows.
    assert params["Model"] == "tiny-sd" and "--model tiny-sd " in command
    assert str(tiny_root) not in command and str(tiny_root) not in str(params)
    assert png_parameters(trajectory)["Seed"] == "7"
    assert [item["caption"] for item in attention] == ["a", "red", "circle", "on", "the", "left"]


def test_text2img_guidance_methods_change_the_image(client):
    def pixels(**kw):
        images = client.predict("a red circle", scale=9, api_name="/text2img", **FAST, **kw)[0]
        return np.asarray(Image.open(images[0]["image"]), np.float32)

    cfg, apg = pixels(guidance="cfg"), pixels(guidance="apg", eta=0.0, momentum=-0.5)
    assert np.abs(cfg - apg).mean() > 0
    assert np.array_equal(cfg, pixels(guidance="cfg"))  # same seed, same image


def test_class_cond_by_name(client):
    images, probs, command = client.predict("square", api_name="/class_cond", **FAST)
    params = png_parameters(images[0]["image"])
    assert params["Class"] == "square" and params["CFG scale"] == "4"
    assert "--class square" in command


def test_controlnet_from_sketch_and_pose(client, tmp_path):
    sketch = np.full((200, 300, 3), 255, np.uint8)
    sketch[90:110, 40:260] = 0
    Image.fromarray(sketch).save(tmp_path / "sketch.png")
    images, used, command = client.predict(handle_file(str(tmp_path / "sketch.png")), "a small star", preprocess=True,
                                           control_type="scribble", api_name="/controlnet", **FAST)
    params = png_parameters(images[0]["image"])
    assert params["ControlNet"].startswith("scribble") and params["Prompt"] == "a small star"
    assert params["Model"] == "tiny-sd" and "/" not in params["ControlNet"] and "/" not in command
    assert Image.open(used).size == (32, 32)
    pose_map, control_type = client.predict("[[0.5, 0.1]" + ", [0.5, 0.2]" * 17 + "]", None,
                                            api_name="/preview_pose")
    assert control_type == "pose" and Image.open(pose_map).size == (32, 32)


def test_compare_grid_and_measures(client):
    grid, plot, table, matched, notes = client.predict("a red circle", methods=["CFG", "APG"], scales="1, 7.5",
                                                       seeds=2, api_name="/compare", **FAST)
    params = png_parameters(grid)
    assert params["X Values"] == "1, 7.5" and params["Y Values"] == "CFG, APG"
    rows = table["data"]
    assert len(rows) == 4
    header = table["headers"]
    diversity = [row[header.index("diversity")] for row in rows]
    assert all(d > 0 for d in diversity)  # two seeds differ
    for name in ("saturation", "clipped"):
        for row in rows:
            low, mean, high = (row[header.index(n)] for n in (f"{name}_low", name, f"{name}_high"))
            assert low <= mean <= high
    assert "adherence" not in header  # the world does not judge the tiny test model
    assert plot is not None and not matched["data"] and notes == ""


def test_compare_spec_rows_a_row_that_cannot_run_and_matching_without_a_judge(client):
    grid, _, table, matched, notes = client.predict(
        "a red circle", methods=["CFG", "AutoGuidance"], scales="1, 5", seeds=1, more_rows="apg:momentum=-0.75\n"
        "pag:pag_scale=2 ; ", match_adherence=True, match_scale=5, api_name="/compare", **FAST)
    assert png_parameters(grid)["Y Values"] == "CFG, AutoGuidance, apg:momentum=-0.75, pag:pag_scale=2"
    methods = {row[0] for row in table["data"]}
    assert methods == {"CFG", "AutoGuidance", "apg:momentum=-0.75", "pag:pag_scale=2"}
    assert "AutoGuidance did not run: AutoGuidance needs a weak version" in notes
    assert "Matching adherence needs an adherence measure" in notes and not matched["data"]


def test_compare_matches_adherence_where_the_world_judges(client, monkeypatch):
    import ui.compare

    from world.measures import cell_measures

    def enlarged(images, prompt=None):  # the evaluator reads the lab models' 64 x 64 images
        return cell_measures([im.resize((64, 64), Image.NEAREST) for im in images], prompt)

    monkeypatch.setattr(ui.compare, "is_project_model", lambda name: True)  # the tiny model, judged as the lab's
    monkeypatch.setattr(ui.compare, "cell_measures", enlarged)
    _, _, table, matched, notes = client.predict("a large red circle on the left on a white background",
                                                 methods=["CFG", "APG"], scales="1, 3", seeds=2, match_adherence=True,
                                                 match_scale=2, api_name="/compare", **FAST)
    assert "adherence" in table["headers"]
    assert [row[0] for row in matched["data"]] == ["CFG", "APG"]
    header = matched["headers"]
    assert header[:6] == ["method", "matched scale", "adherence", "saturation", "clipped", "diversity"]
    assert matched["data"][0][1] == "2" and "[" in matched["data"][0][header.index("saturation")]
    assert "CFG at scale 2 reaches a mean adherence" in notes


def test_compare_presets_set_the_rows(client):
    assert client.predict("Reshaping: TCFG / MAMBO-G / FDG", api_name="/compare_preset") == ["TCFG", "MAMBO-G", "FDG"]
    assert len(client.predict("All", api_name="/compare_preset")) >= 11


def test_a_second_user_waits_and_is_served(client, lab_app, monkeypatch):
    monkeypatch.setenv("LAB_MAX_WORK_S", "100000")
    # The first job is long enough (hundreds of steps) that the second is certainly queued behind it.
    first = client.submit("a red circle", steps=300, num_images=8, api_name="/text2img")
    # submit() is asynchronous: wait until the first job holds the worker, so the second must queue behind it.
    deadline = time.monotonic() + 60
    while first.status().code.name not in ("PROCESSING", "PROGRESS") and time.monotonic() < deadline:
        time.sleep(0.01)
    other = Client(lab_app[0], verbose=False)  # a second user is a session of its own
    second = other.submit("a blue square", steps=2, api_name="/text2img")
    statuses = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            statuses.append(second.status())
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert first.result()[0] and second.result()[0]
    finally:
        done.set()
        watcher.join()
    assert any(s.code.name == "IN_QUEUE" for s in statuses)


def test_every_whole_seed_up_to_the_maximum_is_exact(client):
    for seed in (2**53 + 1, 2**63 - 17, str(2**63 - 17)):
        images = client.predict("a red circle", seed=seed, api_name="/text2img", **FAST)[0]
        assert png_parameters(images[0]["image"])["Seed"] == str(seed)
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="from 0 to 9223372036854775791"):
        client.predict("a red circle", seed=2**63 - 16, api_name="/text2img", **FAST)
