"""Pose inputs for the ControlNet tab: named presets as keypoint JSON, and keypoints from a photo."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from .errors import EngineError
from .world.figure import POSES, figure_extent, pose_keypoints

MARGIN = 0.1  # fraction of the image left free around a preset figure


def preset_json(name: str) -> str:
    """An upright preset figure as 18 [x, y] keypoints in 0..1, centred with a margin."""
    if name not in POSES:
        raise EngineError(f"Unknown pose preset '{name}'; choose one of {', '.join(POSES)}.")
    kp = pose_keypoints(np.random.default_rng(0), name, jitter=0.0, mirror=False)  # (18, 2) body units
    x0, y0, x1, y1 = figure_extent(kp)
    scale = (1 - 2 * MARGIN) / max(x1 - x0, y1 - y0)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    points = (kp - centre) * scale + 0.5  # (18, 2) in 0..1
    return json.dumps([[round(float(x), 3), round(float(y), 3)] for x, y in points])


_detector = None


def detect_pose(image: Image.Image) -> Image.Image:
    """An OpenPose skeleton of the people in a photo, through controlnet_aux, where its weights are cached."""
    global _detector
    try:
        if _detector is None:
            from controlnet_aux.open_pose import OpenposeDetector

            try:  # the cache first: no network wait where the weights are already present
                _detector = OpenposeDetector.from_pretrained("lllyasviel/Annotators", local_files_only=True)
            except Exception:
                _detector = OpenposeDetector.from_pretrained("lllyasviel/Annotators")
    except Exception as exc:  # no network, no cached weights, or controlnet_aux missing: say which
        raise EngineError("Pose from a photo needs the OpenPose annotator weights (lllyasviel/Annotators), which "
                          f"are not available here ({type(exc).__name__}); use a preset or edit the keypoints "
                          "instead.") from exc
    return _detector(image.convert("RGB"), output_type="pil")
