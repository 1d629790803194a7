"""The pose editor: an OpenPose skeleton whose joints are dragged in the browser; its value is OpenPose JSON.

The editor (ui/static/pose_editor.js) draws the 18 keypoints with controlnet_aux's limbs and colours on an SVG at
the canvas size its value names, and writes a new value when a joint is released. The keypoint JSON box stays the
API's input: `from_editor` copies the editor's pose into it, `to_editor` draws the box's pose in the editor, both as
the same compact OpenPose text, so a round trip ends without another change event."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from engine.control.openpose import keypoints_from_json, openpose_json
from engine.errors import EngineError
from world.figure import POSES, preset_json

from .inputs import shown

STATIC = Path(__file__).parent / "static"
CANVAS_SIDE = 512  # the editor's long side in canvas pixels: controlnet_aux draws its skeletons at this scale
MAX_PEOPLE = 10
MAX_JSON = 100_000  # characters; ten people with every joint take under 4,000

TEMPLATE = """
<div class="pe" tabindex="0">
  <div class="pe-bar">
    <button type="button" data-act="add">Add person</button>
    <button type="button" data-act="duplicate">Duplicate</button>
    <button type="button" data-act="remove">Remove</button>
    <button type="button" data-act="hide" aria-pressed="false"
            title="While on, a tap on a joint hides or shows it">Hide/show joints</button>
    <button type="button" data-act="undo" title="Ctrl+Z">Undo</button>
    <button type="button" data-act="import">Import JSON</button>
    <button type="button" data-act="export">Export JSON</button>
    <input type="file" accept=".json,application/json" class="pe-file" hidden>
  </div>
  <svg class="pe-svg" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Pose skeleton"></svg>
  <div class="pe-status" aria-live="polite"></div>
  <div class="pe-help">Drag a joint to move it. Right-click a joint (or use Hide/show joints) to hide it: hidden
    joints are left out of the map. Click a joint to pick its person for Duplicate and Remove.</div>
</div>
"""


def canvas_size(width: int, height: int) -> tuple[int, int]:
    """The editor's canvas for a model generating width x height: the model's aspect, CANVAS_SIDE on the long side."""
    side = max(width, height)
    return max(1, round(CANVAS_SIDE * width / side)), max(1, round(CANVAS_SIDE * height / side))


def people_of(value, name: str) -> list:
    """People from keypoint text (any form keypoints_from_json reads), or one sentence naming the input."""
    if not isinstance(value, str):
        raise EngineError(f"The {name} must be text, not {shown(value)}.")
    if len(value) > MAX_JSON:
        raise EngineError(f"The {name} is {len(value)} characters long; the limit is {MAX_JSON}.")
    try:
        people = keypoints_from_json(value)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    if len(people) > MAX_PEOPLE:
        raise EngineError(f"The {name} holds {len(people)} people; the editor takes at most {MAX_PEOPLE}.")
    return people


def editor_value(keypoints: str, size: tuple[int, int]) -> str:
    """The editor's value for keypoint text: OpenPose JSON on the canvas for a model of `size` (width, height)."""
    return openpose_json(people_of(keypoints, "keypoint JSON"), *canvas_size(*size))


def keypoints_from_editor(value: str, keypoints: str | None, size: tuple[int, int]) -> str | None:
    """The keypoint text for the editor's value, or None where the box already holds that pose."""
    new = openpose_json(people_of(value, "pose editor's value"), *canvas_size(*size))
    try:
        same = openpose_json(people_of(keypoints, "keypoint JSON"), *canvas_size(*size)) == new
    except EngineError:  # the box holds text being typed: the editor's pose replaces it
        same = False
    return None if same else new


def presets() -> dict[str, list[list[float]]]:
    """Every preset figure as 18 [x, y] in 0..1, for the editor's Add person."""
    return {name: json.loads(preset_json(name)) for name in POSES}


def pose_editor(value: str) -> gr.HTML:
    """The editor component (elem_id pose-editor) holding OpenPose JSON `value`."""
    return gr.HTML(value, html_template=TEMPLATE, css_template=(STATIC / "pose_editor.css").read_text(),
                   js_on_load=(STATIC / "pose_editor.js").read_text(), elem_id="pose-editor",
                   presets=presets(), max_people=MAX_PEOPLE, container=False)
