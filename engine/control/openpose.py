"""Pose conditions: OpenPose skeleton maps drawn with controlnet_aux, and keypoints read from JSON."""
import json

import cv2
import numpy as np

MAX_CANVAS = 100_000  # pixels on a side of an OpenPose canvas
DRAW_SIZE = 512  # draw_bodypose hard-codes stickwidth 4 and joint radius 4, sized for ~512 px canvases


def pose_map(keypoints: list[np.ndarray], *, size: int = 64) -> np.ndarray:
    """OpenPose skeleton (uint8 size x size x 3 on black) of people given as (18, 3) x, y in 0..1 and visibility."""
    # controlnet_aux imports torch at module load, so import only when a pose map is drawn.
    from controlnet_aux.open_pose.body import Keypoint
    from controlnet_aux.open_pose.util import draw_bodypose

    # Drawn at 512 and area-downscaled: at 64 px the fixed 4 px sticks would swallow a small figure, and
    # a ControlNet trained on downscaled 512 maps sees the same proportions as the original annotator's.
    canvas = np.zeros((DRAW_SIZE, DRAW_SIZE, 3), np.uint8)
    for person in keypoints:
        person = np.asarray(person, np.float64)
        if person.shape != (18, 3):
            raise ValueError(f"Each person needs an (18, 3) keypoint array, got shape {person.shape}.")
        points = [Keypoint(float(x), float(y)) if v > 0 else None for x, y, v in person]
        canvas = draw_bodypose(canvas, points)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def _numbers(values) -> np.ndarray:
    """Keypoint values as a float64 array; text, objects, ragged lists or 400-digit integers are one sentence."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise ValueError("Keypoint coordinates must be numbers, 18 [x, y] or [x, y, visible] per person.") from None


def _person(values, *, scale=(1.0, 1.0)) -> np.ndarray:
    """(18, 3) array from 18 [x, y] or [x, y, v] entries, divided by scale, checked to lie in 0..1."""
    arr = _numbers(values)
    if arr.ndim != 2 or arr.shape[0] != 18 or arr.shape[1] not in (2, 3):
        raise ValueError(f"A person needs 18 keypoints of [x, y] or [x, y, visible], got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("Keypoint values must be finite numbers.")
    if arr.shape[1] == 2:
        arr = np.concatenate([arr, np.ones((18, 1))], 1)
    arr[:, 0] /= scale[0]
    arr[:, 1] /= scale[1]
    arr[:, 2] = arr[:, 2] > 0
    seen = arr[arr[:, 2] > 0, :2]
    if seen.size and (seen.min() < 0 or seen.max() > 1):
        raise ValueError("Keypoint x and y must be normalised to 0..1 (fractions of image width and height).")
    return arr.astype(np.float32)


def keypoints_from_json(text: str) -> list[np.ndarray]:
    """People as (18, 3) arrays (x, y in 0..1, visible) from a keypoint list or OpenPose JSON."""
    # Accepted: one person as 18 [x, y] or [x, y, v] with x, y normalised to 0..1; a list of such people;
    # OpenPose JSON {"people": [{"pose_keypoints_2d": [x, y, c, ...]}], "canvas_width": W, "canvas_height": H}
    # in pixels (taken as already normalised when no canvas size is given). Confidence 0 means not visible.
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"Pose is not valid JSON: {e.msg} at character {e.pos}.") from None
    except ValueError:  # a number of thousands of digits
        raise ValueError("Pose JSON holds a number too long to read.") from None
    except TypeError:
        raise ValueError("Pose must be JSON text.") from None
    if isinstance(data, dict):
        return _from_openpose(data)
    if isinstance(data, list) and data and isinstance(data[0], list) and data[0] and isinstance(data[0][0], list):
        return [_person(p) for p in data]
    if isinstance(data, list):
        return [_person(data)]
    raise ValueError("Pose JSON must be a list of 18 keypoints, a list of people, or OpenPose JSON with 'people'.")


def _from_openpose(data: dict) -> list[np.ndarray]:
    """People from OpenPose JSON, pixel coordinates divided by the canvas size."""
    people = data.get("people")
    if not isinstance(people, list):
        raise ValueError("OpenPose JSON needs a 'people' list.")
    scale = (_canvas_side(data, "canvas_width"), _canvas_side(data, "canvas_height"))
    out = []
    for person in people:
        flat = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        flat = _numbers(flat) if isinstance(flat, list) else None
        if flat is None or flat.shape != (54,):
            raise ValueError("Each OpenPose person needs 'pose_keypoints_2d' with 54 numbers (18 x, y, confidence).")
        out.append(_person(flat.reshape(18, 3), scale=scale))
    return out


def _canvas_side(data: dict, key: str) -> float:
    """canvas_width or canvas_height of OpenPose JSON: a number of pixels above 0 and at most MAX_CANVAS."""
    value = data.get(key, 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_CANVAS:
        raise ValueError(f"The OpenPose JSON's {key} must be a number of pixels above 0 and at most {MAX_CANVAS}.")
    return float(value)


def openpose_json(people: list[np.ndarray], width: int, height: int) -> str:
    """OpenPose JSON of people given as (18, 3) x, y in 0..1 and visibility: pixels of a width x height canvas to a
    tenth, confidence 1 or 0, written compactly (the pose editor writes the same text, so equal poses compare
    equal as text)."""
    if width <= 0 or height <= 0:
        raise ValueError("canvas_width and canvas_height must be positive.")

    def pixels(value: float) -> float | int:
        rounded = round(float(value), 1)
        return int(rounded) if rounded.is_integer() else rounded

    out = []
    for person in people:
        person = np.asarray(person, np.float64)
        if person.shape != (18, 3):
            raise ValueError(f"Each person needs an (18, 3) keypoint array, got shape {person.shape}.")
        flat = [v for x, y, c in person for v in (pixels(x * width), pixels(y * height), int(c > 0))]
        out.append({"pose_keypoints_2d": flat})
    return json.dumps({"people": out, "canvas_width": int(width), "canvas_height": int(height)},
                      separators=(",", ":"))
