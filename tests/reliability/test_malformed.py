"""Hundreds of malformed calls across every endpoint, each answered with one sentence that leaks no server path.

For each parameter of each endpoint a valid call is made with that one value replaced by something hostile: wrong
types, NaN and infinities, huge and empty values, invalid Unicode, server paths, hub ids, file payloads pointing
outside the uploads, corrupt and oversized images, and deeply nested JSON."""

from __future__ import annotations

import json
import math

import numpy as np
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
