"""Hundreds of malformed calls across every endpoint, each answered with one sentence that leaks no server path.

For each parameter of each endpoint a valid call is made with that one value replaced by something hostile: wrong
types, NaN and infinities, huge and empty values, invalid Unicode, server paths, hub ids, file payloads pointing
outside the uploads, corrupt and oversized images, and deeply nested JSON."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import requests
from PIL import Image

from .conftest import is_one_sentence, raw_call, upload

DEEP = json.loads("[" * 500 + "]" * 500)  # as deep as a client's JSON encoder goes; 2000 is sent raw below
HOSTILE = [
    None, "", "\ud800 lone surrogate", "x" * 100_000, "🙂 ünïcödé", -1, 2**70, 1e308, math.nan, math.inf, -math.inf,
    True, [], {}, DEEP, "/etc/passwd", "../../../etc/shadow", "/root/.ssh", "stabilityai/stable-diffusion-xl-base-1.0",
    {"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, {"composite": "/etc/passwd"}, [1, 2, 3],
]
PER_PARAMETER = 4  # hostile values tried on each parameter (rotating through the list, so all are used)
SKIP = {"_random_seed"}  # no inputs; their wrong-count calls are below


def valid_value(param: dict, images: dict):
    component = param["component"].lower()
    if "image" in component or "sketch" in component:
        return images["sketch" if "sketch" in component else "image"]
    if param["parameter_name"] == "steps":
        return 2
    if param["parameter_has_default"]:
        return param["parameter_default"]
    return {"class_label": "circle", "prompt": "a red circle", "keypoints": "[]"}.get(param["parameter_name"],
                                                                                      "a red circle")


def test_hostile_values_get_one_sentence_each(url, sketch_file, tmp_path):
    info = requests.get(f"{url}gradio_api/info", timeout=30).json()["named_endpoints"]
    picture = upload(url, sketch_file)
    images = {"image": picture, "sketch": {"background": None, "layers": [], "composite": picture}}
    calls = errors = clean = 0
    bad: list[str] = []
    k = 0
    for api, endpoint in info.items():
        if any(api.endswith(s) for s in SKIP):
            continue
        params = endpoint["parameters"]
        base = [valid_value(p, images) for p in params]
        for i, param in enumerate(params):
            for _ in range(PER_PARAMETER):
                value = HOSTILE[k % len(HOSTILE)]
                k += 1
                data = base[:i] + [value] + base[i + 1:]
                kind, answer = raw_call(url, api.lstrip("/"), data)
                calls += 1
                if kind == "error":
                    errors += 1
                    if is_one_sentence(answer):
                        clean += 1
                    else:
                        bad.append(f"{api} {param['parameter_name']}={str(value)[:30]!r}: {str(answer)[:200]!r}")
                else:
                    assert "root:" not in json.dumps(answer), (api, param["parameter_name"])  # no file content
    print(f"\nmalformed calls: {calls}, refused: {errors}, refused with one clean sentence: {clean}, "
          f"leaks or bad messages: {len(bad)}")
    assert calls >= 300
    assert not bad, "\n".join(bad[:20])


def test_whole_call_attacks(url, tmp_path):
    """Wrong input counts, non-list data, 2000-deep JSON, and corrupt and oversized images."""
    for api in ("text2img", "compare", "class_cond", "preview_pose"):
        for data in ([], ["a"] * 40):
            kind, answer = raw_call(url, api, data)
            assert kind == "error" and is_one_sentence(answer), (api, len(data), answer)
    deep = '{"data": [' + "[" * 2000 + "]" * 2000 + "]}"
    r = requests.post(f"{url}gradio_api/call/preview_pose", data=deep, headers={"Content-Type": "application/json"},
                      timeout=30)
    if r.status_code == 200:
        stream = requests.get(f"{url}gradio_api/call/preview_pose/{r.json()['event_id']}", timeout=30).text
        assert "event: error" in stream and "Traceback" not in stream
    else:
        assert r.status_code < 500 and "Traceback" not in r.text
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    huge = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(huge)  # a few hundred KB that would decode to 432 MB of RGB
    for path, expected in ((corrupt, "could not be read"), (huge, "16 megapixels")):
        kind, answer = raw_call(url, "preview_canny", [upload(url, path), None, 100, 200])
        assert kind == "error" and expected in answer and is_one_sentence(answer)
    assert raw_call(url, "text2img", ["a red circle"] + [None] * 17)[0] in ("complete", "error")
    kind, outputs = raw_call(url, "text2img", _text2img(url, steps=2))
    assert kind == "complete"  # still serving


def _text2img(url: str, **overrides) -> list:
    params = requests.get(f"{url}gradio_api/info", timeout=30).json()["named_endpoints"]["/text2img"]["parameters"]
    values = {p["parameter_name"]: p.get("parameter_default") for p in params}
    values.update(prompt="a red circle", **overrides)
    return [values[p["parameter_name"]] for p in params]


def _pose(**fields) -> str:
    """OpenPose JSON with one standing figure on a 64x64 canvas, `fields` replacing (or adding) its own."""
    flat = [v for i in range(18) for v in (20 + i, 10 + 2 * i, 1)]
    data = {"people": [{"pose_keypoints_2d": flat}], "canvas_width": 64, "canvas_height": 64, **fields}
    return json.dumps(data, allow_nan=True)


HUGE = "9" * 400  # a 400-digit integer, written into JSON text in place of "HUGE"
ONE = [[0.5, 0.1 + 0.04 * i] for i in range(18)]  # one figure as 18 [x, y]
# Inputs that were answered "The request failed unexpectedly (<type>)" with a traceback in the log: (endpoint,
# parameter values by name or the whole data list, a word the sentence must hold).
UNEXPECTED = [
    ("preview_pose", {"source": _pose(canvas_width="nan")}, "canvas_width"),
    ("preview_pose", {"source": _pose(canvas_width=[64])}, "canvas_width"),
    ("preview_pose", {"source": _pose(canvas_width="HUGE").replace('"HUGE"', HUGE)}, "canvas_width"),
    ("preview_pose", {"source": _pose(canvas_width={"px": 64})}, "canvas_width"),
    ("preview_pose", {"source": _pose(canvas_height="64")}, "canvas_height"),
    ("preview_pose", {"source": _pose(canvas_height=[])}, "canvas_height"),
    ("preview_pose", {"source": _pose(canvas_height=None)}, "canvas_height"),
    ("preview_pose", {"source": _pose(canvas_width=True)}, "canvas_width"),
    ("preview_pose", {"source": _pose(people=[{"pose_keypoints_2d": [{"x": 1}] * 54}])}, "numbers"),
    ("preview_pose", {"source": _pose(people=[{"pose_keypoints_2d": [[1, 2]] * 54}])}, "numbers"),
    ("preview_pose", {"source": json.dumps([[0.5, 0.5]] * 17 + [["a", "b"]])}, "numbers"),
    ("preview_pose", {"source": json.dumps([[0.5, 0.5]] * 17 + [[{}, 0.5]])}, "numbers"),
    ("preview_pose", {"source": json.dumps([["HUGE", 0.5]] + ONE[1:]).replace('"HUGE"', HUGE)}, "numbers"),
    ("preview_pose", {"source": _pose(people=[{"pose_keypoints_2d": ["HUGE"] + [0] * 53}]).replace('"HUGE"', HUGE)},
     "numbers"),
    ("pose_to_editor", [_pose(canvas_width="nan"), None], "canvas_width"),
    ("pose_to_editor", [_pose(canvas_width=[64]), None], "canvas_width"),
    ("pose_editor_canvas", [_pose(canvas_height={"px": 1}), None], "canvas_height"),
    ("pose_editor_canvas", [json.dumps([[{}, 0.5]] * 18), None], "numbers"),
    ("pose_from_editor", [_pose(canvas_width=[64]), "[]", None], "canvas_width"),
    ("pose_from_editor", [json.dumps([["x", "y"]] * 18), "[]", None], "numbers"),
    ("class_cond", {"class_label": "9" * 5000}, "class_label"),
    ("class_cond", {"class_label": "²"}, "class_label"),
    ("class_cond", {"class_label": "¹²³"}, "class_label"),
    ("class_cond", {"class_label": "0" * 4400}, "class_label"),
]
# Answers that quoted Python reprs, Gradio's own preprocess text or raw library text, or did not name the
# parameter.
REPRS = [
    ("compare", {"x_axis": "abc"}, "x_axis"),
    ("compare", {"methods": ["abc"]}, "methods"),
    ("compare", {"methods": "CFG"}, "methods"),
    ("compare", {"methods": [{"a": 1}]}, "methods"),
    ("compare", {"match_scale": 500}, "match_scale"),
    ("compare", {"match_scale": "x" * 5000}, "match_scale"),
    ("compare", {"match_adherence": "yes"}, "match_adherence"),
    ("controlnet", {"control_type": "abc"}, "control_type"),
    ("controlnet", {"control_type": ["x" * 5000]}, "control_type"),
    ("controlnet", {"control_type_2": "abc"}, "control_type_2"),
    ("text2img", {"guidance": [1, 2, 3]}, "guidance"),
    ("text2img", {"guidance": 5}, "guidance"),
    ("text2img", {"scheduler": [1, 2, 3]}, "scheduler"),
    ("text2img", {"scale": "abc"}, "scale"),
    ("text2img", {"scale": "5"}, "scale"),
    ("text2img", {"scale": 500}, "scale"),
    ("text2img", {"scale": [1]}, "scale"),
    ("text2img", {"steps": math.inf}, "steps"),
    ("text2img", {"trajectory": "yes"}, "trajectory"),
    ("text2img", {"prompt": {"text": "a circle"}}, "prompt"),
    ("text2img", {"seed": {"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}}, "seed"),
    ("pose_preset", {"name": [1, 2, 3]}, "name"),
    ("pose_preset", {"name": "dancing"}, "name"),
    ("class_cond", {"class_label": 2**1400}, "class_label"),
    ("class_cond", {"class_label": ["circle"]}, "class_label"),
    ("preview_pose", {"source": "[" + "9" * 5000 + "]"}, "number"),
    ("preview_pose", {"source": ["[]"]}, "source"),
    ("copy_control_2", ["IMAGE", "abc", "auto"], "control_type"),
    ("copy_control_2", ["IMAGE", "scribble", ["auto"]], "controlnet"),
    ("preview_canny", {"source": "/etc/hostname"}, "source"),
    ("preview_canny", {"low": "100"}, "low"),
]
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
REPR_MARKS = re.compile(r"\(type: |<class |<PIL|object at 0x|Traceback|unexpectedly|Error\b|Exception\b")


def _call(url: str, api: str, values, image: dict):
    """The data list of a call: `values` as given (IMAGE standing for an uploaded image), or by name over the
    endpoint's defaults (a prompt and 2 steps where it has them)."""
    if isinstance(values, list):
        return [image if v == "IMAGE" else v for v in values]
    params = requests.get(f"{url}gradio_api/info", timeout=30).json()["named_endpoints"][f"/{api}"]["parameters"]
    data = {p["parameter_name"]: p.get("parameter_default") for p in params}
    data.update({k: v for k, v in (("prompt", "a red circle"), ("steps", 2), ("class_label", "circle"),
                                   ("source", _pose()), ("control_image", image)) if k in data})
    if api == "preview_canny":
        data["source"] = image
    data.update(values)
    return [data[p["parameter_name"]] for p in params]


@pytest.mark.parametrize("api, values, word", UNEXPECTED + REPRS,
                         ids=[f"{api}-{i}" for i, (api, _, _) in enumerate(UNEXPECTED + REPRS)])
def test_each_once_failing_input_gets_one_clean_sentence(url, sketch_file, api, values, word):
    """Each input that once crashed a handler or quoted a repr: one sentence naming the parameter (or the field of
    its JSON), quoting the bad value in at most 60 characters, with no repr and no library text."""
    kind, answer = raw_call(url, api, _call(url, api, values, upload(url, sketch_file)))
    assert kind == "error", (api, values, answer)
    assert is_one_sentence(answer), answer
    assert word in answer, answer
    assert not REPR_MARKS.search(answer), answer
    assert all(len(quote) <= 62 for quote in QUOTED.findall(answer)), answer
    assert not re.search(r"(.)\1{60}", answer), answer  # no long run of the value echoed back unquoted


def test_cmyk_palette_and_16_bit_images_are_converted_not_refused(url, tmp_path):
    """The stacked control's copy button takes any picture the allowed formats hold, as RGB."""
    pictures = {"cmyk.jpg": Image.new("CMYK", (48, 40), (10, 200, 30, 0)),
                "palette.gif": Image.new("P", (48, 40), 3),
                "deep.png": Image.fromarray(np.full((40, 48), 40000, np.uint16)),
                "cmyk.tiff": Image.new("CMYK", (48, 40), (0, 0, 0, 255))}
    for name, picture in pictures.items():
        path = tmp_path / name
        picture.save(path)
        kind, outputs = raw_call(url, "copy_control_2", [upload(url, path), "canny", "auto"])
        assert kind == "complete", (name, outputs)
        with Image.open(outputs[0]["path"]) as copied:
            assert copied.mode == "RGB" and copied.size == (48, 40), name


def test_an_unknown_endpoint_is_404(url):
    for route in ("call/no_such_endpoint", "run/no_such_endpoint"):
        r = requests.post(f"{url}gradio_api/{route}", json={"data": []}, timeout=30)
        assert r.status_code == 404 and is_one_sentence(r.json()["detail"]), (route, r.status_code, r.text)
    r = requests.post(f"{url}gradio_api/queue/join", json={"data": [], "fn_index": 99_999, "session_hash": "s"},
                      timeout=30)
    assert r.status_code == 404 and is_one_sentence(r.json()["detail"])


def test_a_refusal_is_one_log_line(url, caplog, capfd):
    """A refused value is one warning line, and nothing goes to stderr: no traceback."""
    capfd.readouterr()
    with caplog.at_level("WARNING", logger="guidance_lab"):
        for data in (["abc", None], [_pose(canvas_width="nan"), None]):
            kind, _ = raw_call(url, "preview_pose", data)
            assert kind == "error"
        kind, _ = raw_call(url, "compare", _call(url, "compare", {"x_axis": "abc"}, {}))
        assert kind == "error"
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(refusals) == 3 and all("\n" not in r.getMessage() and not r.exc_info for r in refusals)
    assert "Traceback" not in capfd.readouterr().err
