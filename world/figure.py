"""Stick-figure poses: the 18 OpenPose keypoints of a person in a few named poses with jitter."""
import json

import numpy as np

# Keypoints in body units: x to the image right, y down, head at y ~ 0, ankles at y ~ 1.
# The person faces the viewer, so their right side ("r_") is on the image left.
_BASE = {
    "nose": (0.0, 0.06), "neck": (0.0, 0.2),
    "r_shoulder": (-0.14, 0.22), "l_shoulder": (0.14, 0.22),
    "r_hip": (-0.09, 0.55), "l_hip": (0.09, 0.55),
    "r_eye": (-0.035, 0.03), "l_eye": (0.035, 0.03), "r_ear": (-0.07, 0.05), "l_ear": (0.07, 0.05),
}

# Per pose: (elbow, wrist) offsets from the shoulder for each arm, (knee, ankle) offsets from the hip per leg.
# Arm offsets are for the image-left arm; the image-right arm mirrors x.
_POSES = {
    "standing": dict(r_arm=((-0.05, 0.17), (-0.07, 0.33)), l_arm=((0.05, 0.17), (0.07, 0.33)),
                     r_leg=((-0.01, 0.23), (-0.02, 0.45)), l_leg=((0.01, 0.23), (0.02, 0.45))),
    "arms up": dict(r_arm=((-0.1, -0.14), (-0.14, -0.3)), l_arm=((0.1, -0.14), (0.14, -0.3)),
                    r_leg=((-0.02, 0.23), (-0.03, 0.45)), l_leg=((0.02, 0.23), (0.03, 0.45))),
    "arms out": dict(r_arm=((-0.17, 0.0), (-0.34, 0.0)), l_arm=((0.17, 0.0), (0.34, 0.0)),
                     r_leg=((-0.03, 0.23), (-0.05, 0.45)), l_leg=((0.03, 0.23), (0.05, 0.45))),
    "walking": dict(r_arm=((-0.08, 0.15), (-0.03, 0.3)), l_arm=((0.08, 0.15), (0.16, 0.27)),
                    r_leg=((-0.1, 0.2), (-0.17, 0.42)), l_leg=((0.08, 0.21), (0.1, 0.45))),
    "one arm raised": dict(r_arm=((-0.1, -0.14), (-0.12, -0.31)), l_arm=((0.05, 0.17), (0.07, 0.33)),
                           r_leg=((-0.01, 0.23), (-0.02, 0.45)), l_leg=((0.01, 0.23), (0.02, 0.45))),
    "kneeling": dict(r_arm=((-0.06, 0.16), (-0.05, 0.32)), l_arm=((0.06, 0.16), (0.05, 0.32)),
                     r_leg=((-0.06, 0.22), (-0.06, 0.3)), l_leg=((0.12, 0.08), (0.12, 0.3))),
    "sitting": dict(r_arm=((-0.08, 0.15), (-0.02, 0.27)), l_arm=((0.08, 0.15), (0.02, 0.27)),
                    r_leg=((-0.2, 0.02), (-0.2, 0.24)), l_leg=((0.2, 0.02), (0.2, 0.24))),
}
POSES = tuple(_POSES)

LIMBS = (  # pairs of keypoint indices drawn as thick lines
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (0, 1),
)
TORSO = (2, 5, 11, 8)  # shoulders and hips, filled
HEAD_RADIUS = 0.085  # body units
LIMB_WIDTH = 0.09  # body units


def pose_keypoints(rng: np.random.Generator, pose: str | None = None, *, jitter: float = 0.015,
                   mirror: bool | None = None) -> np.ndarray:
    """(18, 2) keypoints in body units for a named (or random) pose, jittered, mirrored at random unless told."""
    pose = pose or POSES[rng.integers(len(POSES))]
    p = _POSES[pose]
    pts = dict(_BASE)
    for side, arm, leg in (("r", p["r_arm"], p["r_leg"]), ("l", p["l_arm"], p["l_leg"])):
        sx, sy = pts[f"{side}_shoulder"]
        pts[f"{side}_elbow"] = (sx + arm[0][0], sy + arm[0][1])
        pts[f"{side}_wrist"] = (sx + arm[1][0], sy + arm[1][1])
        hx, hy = pts[f"{side}_hip"]
        pts[f"{side}_knee"] = (hx + leg[0][0], hy + leg[0][1])
        pts[f"{side}_ankle"] = (hx + leg[1][0], hy + leg[1][1])
    from .vocab import KEYPOINT_NAMES
    kp = np.array([pts[n] for n in KEYPOINT_NAMES], dtype=np.float64)
    kp[2:14] += rng.normal(0.0, jitter, size=(12, 2))  # limbs only: keep the face tidy
    if rng.random() < 0.5 if mirror is None else mirror:  # mirror: swap sides so left/right variants both occur
        kp[:, 0] *= -1
        kp = kp[[0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16]]
    return kp


def figure_extent(kp: np.ndarray) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) in body units of the drawn figure, limbs' width and head included."""
    r = LIMB_WIDTH / 2
    x0, y0 = kp.min(0) - r
    x1, y1 = kp.max(0) + r
    hx, hy = head_centre(kp)
    return (min(x0, hx - HEAD_RADIUS), min(y0, hy - HEAD_RADIUS), max(x1, hx + HEAD_RADIUS), max(y1, hy + HEAD_RADIUS))


def head_centre(kp: np.ndarray) -> np.ndarray:
    """Centre of the head disc: between the eyes and the nose."""
    return (kp[0] + kp[14] + kp[15]) / 3.0


MARGIN = 0.1  # fraction of the image left free around a preset figure


def preset_json(name: str) -> str:
    """An upright preset figure as 18 [x, y] keypoints in 0..1, centred with a margin."""
    if name not in POSES:
        raise ValueError(f"Unknown pose preset '{name}'; choose one of {', '.join(POSES)}.")
    kp = pose_keypoints(np.random.default_rng(0), name, jitter=0.0, mirror=False)  # (18, 2) body units
    x0, y0, x1, y1 = figure_extent(kp)
    scale = (1 - 2 * MARGIN) / max(x1 - x0, y1 - y0)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    points = (kp - centre) * scale + 0.5  # (18, 2) in 0..1
    return json.dumps([[round(float(x), 3), round(float(y), 3)] for x, y in points])
