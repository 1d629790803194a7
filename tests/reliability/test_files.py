"""No path from the network to the file system: no string is opened as a file, and no answer tells whether a path
exists."""

from __future__ import annotations

import re

import pytest

from .conftest import is_one_sentence, raw_call, upload

EXISTING = ["/etc/passwd", "/etc/shadow", "/root", "/root/.ssh/id_rsa", "/etc/hostname"]
MISSING = ["/etc/no-such-file", "/no/such/folder", "/root/.ssh/no_key"]


def _without(message: str, name: str) -> str:
    return message.replace(repr(name)[1:-1], "NAME").replace(name, "NAME")


@pytest.mark.parametrize("api, data", [
    ("preview_pose", lambda p: [p, None]),
    ("preview_pose", lambda p: [{"composite": p}, None]),
    ("preview_scribble", lambda p: [{"composite": p, "layers": [], "background": None}, None]),
    ("preview_canny", lambda p: [{"path": p, "meta": {"_type": "gradio.FileData"}}, None, 100, 200]),
    ("pose_from_photo", lambda p: [{"path": p, "meta": {"_type": "gradio.FileData"}}]),
])
def test_paths_are_never_opened_and_answers_do_not_tell_existence(url, api, data):
    answers = set()
    for path in EXISTING + MISSING:
        kind, answer = raw_call(url, api, data(path))
        assert kind == "error" and is_one_sentence(answer), (api, path, answer)
        answers.add(_without(answer, path))
    assert len(answers) == 1, answers  # the same sentence whether the path exists or not


def test_an_earlier_output_cannot_be_read_back_by_path(url, sketch_file):
    kind, outputs = raw_call(url, "preview_canny", [upload(url, sketch_file), None, 100, 200])
    assert kind == "complete"
    served = outputs[0]["path"]  # a file this instance wrote
    for data in ([served, None], [{"composite": served}, None]):
        kind, answer = raw_call(url, "preview_pose", data)
        assert kind == "error" and is_one_sentence(answer)


@pytest.mark.parametrize("api, index", [("text2img", 2), ("compare", 2), ("class_cond", 1), ("class_names", 0)])
def test_model_names_are_the_offered_ones_only(url, api, index):
    import requests

    params = requests.get(f"{url}gradio_api/info", timeout=30).json()["named_endpoints"][f"/{api}"]["parameters"]
    base = [p.get("parameter_default") for p in params]
    base[0] = base[0] if base[0] is not None else ("circle" if api == "class_cond" else "a red circle")
    answers = set()
    for name in ["/root/.ssh", "/etc", "/no/such/folder", "stabilityai/stable-diffusion-xl-base-1.0", "org/model",
                 "../../etc", "lab-sd-not-here"]:
        data = list(base)
        data[index] = name
        if api == "text2img":
            data[[p["parameter_name"] for p in params].index("steps")] = 2
        kind, answer = raw_call(url, api, data)
        assert kind == "error" and is_one_sentence(answer), (name, answer)
        assert "this server offers" in answer
        answers.add(re.sub(r"'[^']*'", "NAME", answer))
    assert len(answers) == 1, answers


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n"


def test_images_are_decoded_only_from_the_allowed_formats(tmp_path, monkeypatch):
    """An EPS upload (which PIL would hand to Ghostscript) never reaches PIL's EPS reader; PNG, JPEG, WebP, BMP, GIF
    and TIFF do reach theirs."""
    from PIL import EpsImagePlugin, Image

    from engine.control.prepare import ImageRefused, check_image_header, read_image

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self) or 1 / 0)
    eps = tmp_path / "figure.eps"
    eps.write_bytes(EPS)
    for read in (read_image, check_image_header):
        with pytest.raises(ImageRefused, match="could not be read as an image"):
            read(eps)
    assert not opened
    for suffix in ("png", "jpg", "webp", "bmp", "gif", "tiff"):
        path = tmp_path / f"ok.{suffix}"
        Image.new("RGB", (8, 6), (200, 10, 10)).save(path)
        assert read_image(path).size == (8, 6) and read_image(path).mode == "RGB"


@pytest.mark.parametrize("api, data", [
    ("preview_canny", lambda f: [f, None, 100, 200]),
    ("pose_from_photo", lambda f: [f]),
    ("preview_scribble", lambda f: [{"background": None, "layers": [], "composite": f}, None]),
])
def test_an_eps_upload_is_one_sentence(url, tmp_path, api, data):
    eps = tmp_path / "figure.eps"
    eps.write_bytes(EPS)
    kind, answer = raw_call(url, api, data(upload(url, eps)))
    assert kind == "error" and is_one_sentence(answer) and "could not be read as an image" in answer, answer
    assert "PNG, JPEG, WebP, BMP, GIF or TIFF" in answer
