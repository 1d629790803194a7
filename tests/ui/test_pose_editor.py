"""The pose editor's OpenPose JSON (import, export, canvas) and the ControlNet sub-tabs' endpoints."""

import json

import numpy as np
import pytest
from gradio_client.exceptions import AppError

from engine.control.openpose import keypoints_from_json, openpose_json
from engine.errors import EngineError
from ui.pose_editor import canvas_size, editor_value, keypoints_from_editor
from world.figure import preset_json


def standing() -> list[np.ndarray]:
    return keypoints_from_json(preset_json("standing"))


def test_openpose_json_round_trips_people_and_hidden_joints():
    people = standing() + standing()
    people[1][:, 0] *= 0.5
    people[1][4, 2] = 0  # a hidden right wrist keeps its place
    text = openpose_json(people, 512, 288)
    data = json.loads(text)
    assert data["canvas_width"] == 512 and data["canvas_height"] == 288
    assert [len(p["pose_keypoints_2d"]) for p in data["people"]] == [54, 54]
    assert data["people"][1]["pose_keypoints_2d"][14] == 0
    back = keypoints_from_json(text)
    for before, after in zip(people, back):
        np.testing.assert_allclose(after, before, atol=0.05 / 288)
    assert openpose_json(back, 512, 288) == text  # written text is a fixed point: equal poses compare equal


def test_the_editor_canvas_has_the_model_aspect_with_a_512_long_side():
    assert canvas_size(64, 64) == (512, 512)
    assert canvas_size(1024, 576) == (512, 288)
    assert canvas_size(512, 768) == (341, 512)
    data = json.loads(editor_value(preset_json("arms up"), (768, 512)))
    assert (data["canvas_width"], data["canvas_height"]) == (512, 341)


def test_the_box_is_left_alone_when_the_editor_shows_its_pose():
    size = (64, 64)
    value = editor_value(preset_json("walking"), size)
    assert keypoints_from_editor(value, preset_json("walking"), size) is None  # same pose, another form
    moved = json.loads(value)
    moved["people"][0]["pose_keypoints_2d"][12] += 40
    text = keypoints_from_editor(json.dumps(moved), preset_json("walking"), size)
    assert json.loads(text)["people"][0]["pose_keypoints_2d"][12] == moved["people"][0]["pose_keypoints_2d"][12]
    assert keypoints_from_editor(value, "[[0.5, 0.1", size) == value  # half-typed box: the editor's pose wins


@pytest.mark.parametrize("value, expected", [
    ("{", "not valid JSON"),
    ('{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}', "54 numbers"),
    ('{"people": 3}', "'people' list"),
    ("[[0.5, 0.1]]", "18 keypoints"),
    (json.dumps({"people": [{"pose_keypoints_2d": [600, 10, 1] * 18}], "canvas_width": 512,
                 "canvas_height": 512}), "normalised to 0..1"),
    (json.dumps({"people": [{"pose_keypoints_2d": [5, 5, 1] * 18}] * 11, "canvas_width": 64, "canvas_height": 64}),
     "at most 10"),
    (12, "must be text, not 12"),
])
def test_bad_editor_values_are_one_sentence(value, expected):
    with pytest.raises(EngineError) as info:
        keypoints_from_editor(value, preset_json("standing"), (64, 64))
    message = str(info.value)
    assert expected in message and "\n" not in message and len(message) < 300


def test_editor_endpoints_answer_bad_json_with_one_sentence(client):
    with pytest.raises(AppError, match="not valid JSON") as info:
        client.predict("{", preset_json("standing"), None, api_name="/pose_from_editor")
    assert "Traceback" not in str(info.value)
    with pytest.raises(AppError, match="18 keypoints"):
        client.predict("[[0.5, 0.1]]", None, api_name="/pose_to_editor")


def test_each_sub_tab_sets_its_type_and_default_controlnet(client):
    assert client.predict(None, None, 100, 200, api_name="/tab_canny") == (None, "canny", "tiny-controlnet")
    pose_map, control_type, net, editor = client.predict(preset_json("standing"), editor_value(
        preset_json("standing"), (32, 32)), None, api_name="/tab_pose")
    assert (control_type, net) == ("pose", "tiny-controlnet") and pose_map is not None
    preset, drawn = client.predict("kneeling", None, api_name="/pose_preset")
    assert preset == drawn and len(keypoints_from_json(preset)) == 1
