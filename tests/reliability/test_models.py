"""Models within reach: a stranger's request names only the models this server offers, each folder by one name, and
no endpoint loads a model outside the model queue: previews and class names read what is loaded or configured."""

from __future__ import annotations

import re
from functools import lru_cache

import pytest
import requests

from .conftest import is_one_sentence, raw_call, upload

NOT_MODELS = ["tiny-sd/unet", "tiny-sd/text_encoder", "tiny-sd/nope", "sd15", "sdxl", "sd35-medium", "dit-xl-2-256",
              "controlnet-canny", "lab-sd", "lab-sd-weak", "../tiny-sd", "/etc"]
KEYPOINTS = "[[0.5, 0.1]" + ", [0.5, 0.2]" * 17 + "]"


@pytest.fixture(scope="module")
def served(tiny_root):
    """(url, engine) of an app of its own on the tiny models, whose store has loaded nothing yet."""
    import app
    from engine.generate import Engine
    from ui.models import folder_choices

    engine = Engine()
    demo = app.create_app(engine, folder_choices(tiny_root, steps=2))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options())
    yield url, engine
    demo.close()


@lru_cache
def _parameters(url: str, api: str) -> tuple[tuple[str, object], ...]:
    info = requests.get(f"{url}gradio_api/info", timeout=30).json()["named_endpoints"][f"/{api}"]["parameters"]
    return tuple((p["parameter_name"], p.get("parameter_default")) for p in info)


def call(url: str, api: str, **values):
    """Call an endpoint with its documented defaults, `values` replacing some by name."""
    params = _parameters(url, api)
    assert set(values) <= {name for name, _ in params}, values
    return raw_call(url, api, [values.get(name, default) for name, default in params])


def test_previews_and_class_names_load_no_model(served, sketch_file):
    url, engine = served
    kind, outputs = call(url, "preview_canny", source=upload(url, sketch_file), model="tiny-sd")
    assert kind == "complete" and outputs[1] == "canny"
    kind, outputs = call(url, "preview_pose", source=KEYPOINTS, model="tiny-sd")
    assert kind == "complete" and outputs[1] == "pose"
    kind, outputs = call(url, "class_names", model="tiny-dit")
    assert kind == "complete" and [c[0] for c in outputs[0]["choices"]] == ["circle", "square", "triangle"]
    assert engine.store.loads == 0 and engine.store.loaded_sources() == []


@pytest.mark.parametrize("api, field", [("text2img", "model"), ("compare", "model"), ("class_cond", "model"),
                                        ("class_names", "model"), ("controlnet", "model"),
                                        ("controlnet", "controlnet"), ("controlnet", "controlnet_2")])
def test_a_name_that_is_no_model_here_is_one_sentence_before_any_load(served, sketch_file, api, field):
    url, engine = served
    loads = engine.store.loads
    extra = {"prompt": "a red circle"} if api in ("text2img", "compare", "controlnet") else {}
    if api == "class_cond":
        extra = {"class_label": "circle"}
    if api == "controlnet":
        extra["control_image"] = upload(url, sketch_file)
        extra.update({"control_image_2": upload(url, sketch_file)} if field == "controlnet_2" else {})
    answers = set()
    for name in NOT_MODELS:
        kind, answer = call(url, api, **extra, **{field: name})
        assert kind == "error" and is_one_sentence(answer), (name, answer)
        assert re.fullmatch(r"'.*' is not a model this server offers; pick one of: [\w, -]+\.", answer), answer
        answers.add(answer.replace(repr(name), "NAME"))
    assert len(answers) == 1, answers
    assert engine.store.loads == loads  # refused before anything was loaded


def test_every_spelling_of_a_folder_is_one_model_with_one_meter(served):
    url, engine = served
    commands = []
    for name in ("././tiny-sd", "tiny-sd/", "tiny-sd"):
        kind, outputs = call(url, "text2img", prompt="a red circle", model=name, steps=2)
        assert kind == "complete", outputs
        commands.append(outputs[1])
    assert all("--model tiny-sd " in command for command in commands), commands
    assert len(engine.meter._prices) == 1  # one price for the one folder, however it was spelled
    assert engine.store.loaded_sources() == [str(engine.resolve("tiny-sd").source)]
