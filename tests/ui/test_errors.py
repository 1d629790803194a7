"""Bad input gets one clear sentence as a gr.Error, never a traceback; the server keeps serving."""

import math

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image


def error_of(client, *args, **kwargs) -> str:
    with pytest.raises(AppError) as info:
        client.predict(*args, **kwargs)
    message = str(info.value)
    assert "Traceback" not in message and 'File "' not in message
    return message


@pytest.mark.parametrize("kwargs, expected", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="a" * 1001), "1001 characters"),
    (dict(prompt="a circle", scale=51), "51"),
    (dict(prompt="a circle", model="no-such-model"), "is not a model this server offers"),
    (dict(prompt="a circle", guidance="magic"), "magic"),
    (dict(prompt="a circle", scheduler="warp"), "warp"),
    (dict(prompt="a circle", interval_start=0.8, interval_end=0.2), "start before it ends"),
])
def test_text2img_bad_input(client, kwargs, expected):
    assert expected in error_of(client, api_name="/text2img", steps=2, **kwargs)


def test_nan_reaches_the_handler_as_a_sentence(lab_app, tiny_root):
    import gradio as gr

    from ui.models import folder_choices
    from ui.text2img import make_handler

    handler = make_handler(lab_app[1], folder_choices(tiny_root, steps=2))
    with pytest.raises(gr.Error, match="finite"):
        next(handler("a circle", scale=math.nan, steps=2, progress=None))  # the handler streams: a generator
    with pytest.raises(gr.Error, match="whole number"):
        next(handler("a circle", steps=math.nan, progress=None))


def test_unknown_class(client):
    assert "Unknown class 'dragon'" in error_of(client, "dragon", api_name="/class_cond", steps=2)


def test_missing_classifier_is_explained(client, monkeypatch, tmp_path):
    from dataclasses import replace

    from engine.models import registry

    absent = replace(registry.REGISTRY["lab-classifier"], source=str(tmp_path / "absent"))
    monkeypatch.setitem(registry.REGISTRY, "lab-classifier", absent)  # as on a machine without the shipped folder
    message = error_of(client, "circle", classifier_scale=2.0, api_name="/class_cond", steps=2)
    assert "lab-classifier" in message and "training/" in message


def test_corrupt_and_huge_images(client, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    assert "could not be read" in error_of(client, handle_file(str(corrupt)), "a star", api_name="/controlnet",
                                           steps=2)
    huge = tmp_path / "huge.png"
    Image.new("L", (5000, 4000), 255).save(huge)
    assert "16 megapixels" in error_of(client, handle_file(str(huge)), "a star", api_name="/controlnet", steps=2)


@pytest.mark.parametrize("kind", ["grey", "16-bit", "transparent", "cmyk", "palette", "float"])
def test_unusual_images_are_converted(client, tmp_path, kind):
    suffix = {"cmyk": "jpg", "palette": "gif", "float": "tiff"}.get(kind, "png")
    path = tmp_path / f"{kind}.{suffix}"
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    if kind == "grey":
        Image.fromarray((ramp * 255).astype(np.uint8), "L").save(path)
    elif kind == "16-bit":
        Image.fromarray((ramp * 65535).astype(np.uint16)).save(path)
    elif kind == "cmyk":
        Image.fromarray((ramp * 255).astype(np.uint8), "L").convert("CMYK").save(path)
    elif kind == "palette":
        Image.fromarray((ramp * 255).astype(np.uint8), "L").convert("P").save(path)
    elif kind == "float":
        Image.fromarray((ramp * 255).astype(np.float32), "F").save(path)
    else:
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[20:40, 10:50] = (0, 0, 0, 255)
        Image.fromarray(rgba, "RGBA").save(path)
    images, used, _ = client.predict(handle_file(str(path)), "a star", control_type="canny", preprocess=True,
                                     api_name="/controlnet", steps=2)
    assert Image.open(used).mode == "RGB" and images


def test_blank_sketch_and_bad_pose_json(client, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), "white").save(blank)
    assert "blank" in error_of(client, handle_file(str(blank)), "a star", control_type="scribble", preprocess=True,
                               api_name="/controlnet", steps=2)
    assert "not valid JSON" in error_of(client, "[[0.5, 0.1", None, api_name="/preview_pose")
    assert "18 keypoints" in error_of(client, "[[0.5, 0.1]]", None, api_name="/preview_pose")


def test_compare_bad_scales_and_rows(client):
    assert "numbers separated by commas" in error_of(client, "a circle", scales="1, lots", api_name="/compare")
    assert "at least one" in error_of(client, "a circle", methods=[], api_name="/compare")
    assert "Unknown comparison row 'magic:eta=0'" in error_of(client, "a circle", more_rows="magic:eta=0",
                                                              api_name="/compare")
    assert "between 0 and 1" in error_of(client, "a circle", more_rows="apg:eta=3", api_name="/compare")
    assert "'Magic' is not one of them" in error_of(client, "a circle", methods=["Magic"], api_name="/compare")
    assert "true or false" in error_of(client, "a circle", match_adherence="yes", api_name="/compare")
    assert "match_scale must be a number from 0 to 100, not 500" in error_of(
        client, "a circle", match_adherence=True, match_scale=500, api_name="/compare")
    assert "limit is 2000" in error_of(client, "a circle", more_rows="cfg;" * 600, api_name="/compare")
    assert "Everything" in error_of(client, "Everything", api_name="/compare_preset")  # not one of the presets


def test_server_keeps_serving_after_errors(client):
    error_of(client, "", api_name="/text2img")
    images = client.predict("a circle", api_name="/text2img", steps=2)[0]
    assert images


def test_an_overlong_model_name_is_one_sentence(client):
    with pytest.raises(AppError) as info:
        client.predict("a circle", model="m" * 3000, api_name="/text2img")
    assert "is not a model this server offers" in str(info.value) and "OSError" not in str(info.value)


def test_mcp_answers_a_mismatched_argument_in_one_sentence(tiny_root):
    """The MCP library answers arguments that do not match a tool's schema by echoing the value; the app answers
    in one sentence that names the parameter and quotes at most 60 characters of it."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    import app
    from engine.generate import Engine
    from ui.models import folder_choices

    async def answers(url: str) -> list[str]:
        async with streamablehttp_client(url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                texts = []
                for arguments in ({"prompt": "a circle", "scale": "x" * 5000}, {"prompt": "x" * 5000},
                                  {"prompt": "a circle", "steps": 2, "scale": 500}):
                    result = await session.call_tool("text2img", arguments)
                    assert result.isError
                    texts.append(" ".join(c.text for c in result.content if hasattr(c, "text")))
                return texts

    demo = app.create_app(Engine(), folder_choices(tiny_root, steps=2))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, mcp_server=True, **app.launch_options())
    try:
        mismatched, long_prompt, too_large = asyncio.run(answers(url))
    finally:
        demo.close()
    assert mismatched.startswith("The scale must be a number") and len(mismatched) < 200, mismatched
    assert "1000" in long_prompt and len(long_prompt) < 200, long_prompt
    assert "scale" in too_large and "500" in too_large and len(too_large) < 200, too_large


def test_values_are_quoted_briefly_and_never_as_python_reprs():
    from ui.inputs import _rephrased, shown

    assert shown("x" * 5000) == "'" + "x" * 57 + "…'" and len(shown("y" * 59)) == 60
    assert [shown(v) for v in (math.nan, -math.inf, None, True, 2**70, {"a": [1]})] == \
        ["NaN", "-Infinity", "null", "true", "1180591620717411303424", '{"a": [1]}']
    assert shown(int("9" * 400)).endswith("…") and len(shown(int("9" * 400))) == 60
    assert shown(list(range(100))) == "a list of 100 items" and shown("\ud800\n") == "'\\ud800\\n'"
    gradio_says = "Value: 'abc' (type: <class 'str'>) is not in the list of choices: ['a', 'b']"
    assert _rephrased(gradio_says) == "'abc' is not one of the choices: 'a', 'b'."
    assert _rephrased("Value 500 is greater than maximum value 50.") == \
        "The value 500 is greater than the maximum, 50."
