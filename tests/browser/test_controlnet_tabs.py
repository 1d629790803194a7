"""The ControlNet tab in a real browser: the pose editor's drag reaches the keypoints and the map, and each sub-tab
generates with its own ControlNet."""

import io
import json

import pytest
from PIL import Image

from engine.pnginfo import parse_parameters
from tests.browser.test_browser import _generate, _shot, page  # noqa: F401  (page is the fixture)

WRIST = 4  # OpenPose's right wrist
DRAG_PX = 40


def _sub_tab(page, name: str):
    page.get_by_text("Guidance Lab").first.wait_for()
    page.get_by_role("tab", name="ControlNet").click()
    page.get_by_role("tab", name=name, exact=True).click()


def _keypoints(page) -> dict:
    return json.loads(page.locator("#pose-keypoints .cm-content").inner_text())


def _map_src(page) -> str:
    image = page.locator("#control-map img").first
    image.wait_for(state="visible")
    return image.get_attribute("src")


def _wait_for_new_map(page, old: str) -> str:
    page.wait_for_function("old => { const i = document.querySelector('#control-map img'); "
                           "return i !== null && i.getAttribute('src') !== old; }", arg=old)
    return _map_src(page)


def _pick_preset(page, name: str):
    page.locator("#pose-preset input").click()
    page.get_by_role("option", name=name, exact=True).click()


def _drag(page, selector: str, dx: float):
    box = page.locator(selector).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=8)
    page.mouse.up()


def _finished_run(page) -> tuple[str, dict]:
    """The reproduce command of the finished run and the PNG parameters of its first image, read from the file
    the page shows."""
    command = page.locator("#controlnet-output textarea").first
    page.wait_for_function("el => el.value.includes('--control-type')", arg=command.element_handle())
    src = page.locator("#controlnet-images img").first.get_attribute("src")
    response = page.request.get(src)
    assert response.ok
    with Image.open(io.BytesIO(response.body())) as image:
        return command.input_value(), parse_parameters(image.info["parameters"])


@pytest.mark.browser
def test_dragging_a_joint_moves_the_keypoint_and_redraws_the_map(page):
    _sub_tab(page, "Pose")
    _pick_preset(page, "standing")
    editor = page.locator("#pose-editor svg.pe-svg")
    joint = f"#pose-editor .pe-hit[data-person='0'][data-joint='{WRIST}']"
    page.locator(joint).wait_for()
    before_map = _map_src(page)
    before = _keypoints(page)
    x0 = before["people"][0]["pose_keypoints_2d"][3 * WRIST] / before["canvas_width"]

    width = editor.bounding_box()["width"]
    _drag(page, joint, DRAG_PX)
    after_map = _wait_for_new_map(page, before_map)
    page.wait_for_function("x0 => { const k = JSON.parse(document.querySelector('#pose-keypoints .cm-content')"
                           ".innerText); return k.people[0].pose_keypoints_2d[12] / k.canvas_width > x0 + 0.01; }",
                           arg=x0)
    after = _keypoints(page)
    x1 = after["people"][0]["pose_keypoints_2d"][3 * WRIST] / after["canvas_width"]
    assert x1 - x0 == pytest.approx(DRAG_PX / width, abs=0.25 * DRAG_PX / width)
    assert after["people"][0]["pose_keypoints_2d"][3 * WRIST + 2] == 1
    assert after_map != before_map
    _shot(page, "pose-editor-dragged")

    _generate(page, "#controlnet-run", "#controlnet-images")
    _, params = _finished_run(page)
    assert params["ControlNet"].startswith("pose ")


def _picture(path):
    image = Image.new("RGB", (96, 96), "white")
    for x in range(20, 76):  # a dark square: four clear edges
        for y in range(20, 76):
            image.putpixel((x, y), (20, 40, 160))
    image.save(path)
    return path


@pytest.mark.browser
@pytest.mark.parametrize("tab, control_type", [("Edges (Canny)", "canny"), ("Pose", "pose")])
def test_each_sub_tab_generates_with_its_own_controlnet(page, tmp_path, tab, control_type):
    _sub_tab(page, tab)
    if control_type == "canny":
        page.locator("#canny-picture input[type=file]").set_input_files(str(_picture(tmp_path / "square.png")))
    _map_src(page)  # the tab's map: the picture's edges, or the pose drawn when the tab opened
    _generate(page, "#controlnet-run", "#controlnet-images")
    command, params = _finished_run(page)
    assert f"--control-type {control_type}" in command
    assert params["ControlNet"].startswith(f"{control_type} ") and "tiny-controlnet" in params["ControlNet"]
    _shot(page, f"controlnet-{control_type}")


def _wait_for_keypoints(page, condition: str):
    """Wait until `condition`, JavaScript over the keypoint box's OpenPose JSON `k`, holds."""
    page.wait_for_function("() => { const el = document.querySelector('#pose-keypoints .cm-content'); "
                           f"try {{ const k = JSON.parse(el.innerText); return {condition}; }} "
                           "catch (e) { return false; } }")
    return _keypoints(page)


@pytest.mark.browser
def test_pose_editor_hides_joints_edits_people_undoes_imports_and_exports(page, tmp_path):
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _sub_tab(page, "Pose")
    joint = f"#pose-editor .pe-hit[data-person='0'][data-joint='{WRIST}']"
    page.locator(joint).click(button="right")
    hidden = _wait_for_keypoints(page, f"k.people[0].pose_keypoints_2d[{3 * WRIST + 2}] === 0")
    assert sum(hidden["people"][0]["pose_keypoints_2d"][2::3]) == 17

    bar = page.locator("#pose-editor .pe-bar")
    bar.get_by_role("button", name="Add person").click()
    _wait_for_keypoints(page, "k.people.length === 2")
    bar.get_by_role("button", name="Duplicate").click()
    _wait_for_keypoints(page, "k.people.length === 3")
    bar.get_by_role("button", name="Remove").click()
    _wait_for_keypoints(page, "k.people.length === 2")
    bar.get_by_role("button", name="Undo").click()
    _wait_for_keypoints(page, "k.people.length === 3")
    _shot(page, "pose-editor-people")

    with page.expect_download() as download:
        bar.get_by_role("button", name="Export JSON").click()
    text = open(download.value.path()).read()
    assert text == page.locator("#pose-keypoints .cm-content").inner_text()  # the editor writes Python's text
    exported = json.loads(text)

    one = {"people": [{"pose_keypoints_2d": exported["people"][1]["pose_keypoints_2d"]}],
           "canvas_width": exported["canvas_width"], "canvas_height": exported["canvas_height"]}
    (tmp_path / "pose.json").write_text(json.dumps(one))
    page.locator("#pose-editor input.pe-file").set_input_files(str(tmp_path / "pose.json"))
    imported = _wait_for_keypoints(page, "k.people.length === 1")
    assert imported["people"] == one["people"]

    (tmp_path / "bad.json").write_text('{"people": [{"pose_keypoints_2d": [1, 2]}]}')
    page.locator("#pose-editor input.pe-file").set_input_files(str(tmp_path / "bad.json"))
    page.locator("#pose-editor .pe-status.pe-error").wait_for()
    assert "54 numbers" in page.locator("#pose-editor .pe-status").inner_text()
    assert _keypoints(page)["people"] == one["people"]
    assert not errors
