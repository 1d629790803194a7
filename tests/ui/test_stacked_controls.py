"""Stacked controls on /controlnet: each unit with a map adds a control, named in the PNG info and the command."""

import shlex

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw

from engine.cli import build_parser
from engine.pnginfo import parse_parameters

FAST = dict(steps=2)
UNIT = ["control_image", "control_type", "controlnet", "control_scale", "control_start", "control_end"]


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """A sketch (dark stroke on white) and a pose-like map (a coloured limb on black), as PNG files."""
    folder = tmp_path_factory.mktemp("maps")
    sketch = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(sketch).line([(8, 32), (56, 32)], fill="black", width=5)
    pose = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(pose).line([(16, 4), (16, 28)], fill=(255, 0, 85), width=3)
    sketch.save(folder / "sketch.png")
    pose.save(folder / "pose.png")
    (folder / "notes.png").write_text("not an image at all")
    return str(folder / "sketch.png"), str(folder / "pose.png"), str(folder / "notes.png")


def test_stacked_parameters_come_last_with_defaults(client):
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/controlnet"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert names[-12:] == [f"{n}_{k}" for k in (2, 3) for n in UNIT]
    assert names[:3] == ["control_image", "prompt", "negative_prompt"]
    assert all(p["parameter_has_default"] for p in params[-12:])


def test_two_controls_are_in_the_png_info_and_the_command(client, maps):
    sketch, pose, _ = maps
    common = dict(prompt="a small star", preprocess=True, control_type="scribble", seed=3, api_name="/controlnet",
                  **FAST)
    images, used, command = client.predict(handle_file(sketch), control_image_2=handle_file(pose),
                                           control_type_2="pose", controlnet_2="tiny-controlnet-2",
                                           control_scale_2=0.6, control_start_2=0.1, **common)
    params = parse_parameters(Image.open(images[0]["image"]).info["parameters"])
    assert params["ControlNet 1"].startswith("scribble ") and params["ControlNet 2"].startswith("pose ")
    assert params["ControlNet 2"].endswith("tiny-controlnet-2")
    assert (params["Control weight 1"], params["Control weight 2"]) == ("1", "0.6")
    assert (params["Control range 1"], params["Control range 2"]) == ("0-1", "0.1-1")
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert args.control == ["control-1.png", "control-2.png"] and args.control_type == ["scribble", "pose"]
    assert args.control_scale == [1, 0.6] and args.control_start == [0, 0.1]
    single = client.predict(handle_file(sketch), **common)[0]  # the second control's residuals change the image
    pixels = [np.asarray(Image.open(item[0]["image"]), np.float32) for item in (images, single)]
    assert np.abs(pixels[0] - pixels[1]).mean() > 0


@pytest.mark.parametrize("unit,fragment", [
    (dict(control_image_3="not an image"), "must be an image uploaded through the client"),
    ("text file", "control_image_3 could not be read as an image"),
    (dict(control_scale_3=50), "control_scale_3 must be a number from 0 to 2, not 50"),
    (dict(control_start_3=0.8, control_end_3=0.2), "Control 3 must start before it ends"),
    (dict(control_type_3="depth"), "control_type_3 must be one of 'canny'"),
    (dict(controlnet_3="/etc/passwd"), "is not a model this server offers"),
])
def test_a_bad_third_unit_is_one_sentence(client, maps, unit, fragment):
    sketch, pose, notes = maps
    unit = {"control_image_3": handle_file(notes)} if unit == "text file" else {"control_image_3": handle_file(pose),
                                                                                **unit}
    with pytest.raises(AppError) as error:
        client.predict(handle_file(sketch), "a small star", preprocess=True, control_image_2=handle_file(pose),
                       control_type_2="pose", api_name="/controlnet", **FAST, **unit)
    message = str(error.value)
    assert fragment in message and "\n" not in message and "Traceback" not in message
    assert "/tmp" not in message and "site-packages" not in message


def test_a_unit_copies_the_current_control_map(client, maps):
    _, pose, _ = maps
    image, control_type, net = client.predict(handle_file(pose), "pose", "tiny-controlnet-2",
                                              api_name="/copy_control_3")
    assert (control_type, net) == ("pose", "tiny-controlnet-2")
    assert np.array_equal(np.asarray(Image.open(image).convert("RGB")), np.asarray(Image.open(pose)))
