"""Draw one object as an anti-aliased alpha mask: supersample 4x with cv2, then area-downsample."""
from dataclasses import dataclass

import cv2
import numpy as np

from .figure import HEAD_RADIUS, LIMB_WIDTH, LIMBS, TORSO, figure_extent, head_centre, pose_keypoints
from .vocab import IMAGE_SIZE

SS = 4  # supersampling factor
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel vertex positions at the supersampled scale


def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of a polygonal shape, centred near the origin, y down."""
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if shape == "triangle":
        return np.array([[0, -0.866], [1, 0.866], [-1, 0.866]], dtype=np.float64)
    if shape == "star":
        a = np.pi * np.arange(10) / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y], 1)
    raise ValueError(f"Shape {shape!r} is not a polygon.")


_POLYGONS = {s: _unit_polygon(s) for s in ("square", "triangle", "star", "heart")}


@dataclass(frozen=True)
class Placement:
    """Where and how big an object is drawn: bbox centre and extent in pixels of the 64 grid."""

    cx: float
    cy: float
    extent: float


def _fit(points: np.ndarray, box: tuple, place: Placement) -> tuple[np.ndarray, float]:
    """Map points so that `box` (x0, y0, x1, y1) gets the placement's centre and max side = extent."""
    x0, y0, x1, y1 = box
    scale = place.extent / max(x1 - x0, y1 - y0)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    return (points - centre) * scale + np.array([place.cx, place.cy]), scale


def _fixed(points: np.ndarray) -> np.ndarray:
    """Pixel coords -> cv2 fixed-point int32 at the supersampled scale."""
    return np.round(points * SS * (1 << _SHIFT)).astype(np.int32)


def _draw_figure(canvas: np.ndarray, kp: np.ndarray, place: Placement) -> np.ndarray:
    """Draw a person (thick limbs, filled torso, head disc) from body-unit keypoints; return (18, 3) in 0..1."""
    pts, scale = _fit(kp, figure_extent(kp), place)
    width = max(1, int(round(LIMB_WIDTH * scale * SS)))
    f = _fixed(pts)
    cv2.fillConvexPoly(canvas, f[list(TORSO)], 255, cv2.LINE_8, _SHIFT)
    for a, b in LIMBS:
        cv2.line(canvas, tuple(map(int, f[a])), tuple(map(int, f[b])), 255, width, cv2.LINE_8, _SHIFT)
    head = _fixed(_fit(head_centre(kp)[None], figure_extent(kp), place)[0][0])
    cv2.circle(canvas, (int(head[0]), int(head[1])), int(HEAD_RADIUS * scale * SS * (1 << _SHIFT)), 255, -1, cv2.LINE_8, _SHIFT)
    return np.concatenate([pts / IMAGE_SIZE, np.ones((18, 1))], 1).astype(np.float32)


def draw_figure(kp: np.ndarray, place: Placement) -> np.ndarray:
    """Alpha mask uint8 (64, 64) of a person with the given body-unit keypoints (used for shape templates)."""
    n = IMAGE_SIZE * SS
    canvas = np.zeros((n, n), np.uint8)
    _draw_figure(canvas, kp, place)
    return cv2.resize(canvas, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def draw_object(shape: str, place: Placement, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Alpha mask uint8 (64, 64) of one object, plus (18, 3) keypoints in 0..1 coords for figures."""
    n = IMAGE_SIZE * SS
    canvas = np.zeros((n, n), np.uint8)
    keypoints = None
    if shape == "circle":
        c = _fixed(np.array([place.cx, place.cy]))
        cv2.circle(canvas, (int(c[0]), int(c[1])), int(place.extent / 2 * SS * (1 << _SHIFT)), 255, -1, cv2.LINE_8, _SHIFT)
    elif shape == "figure":
        keypoints = _draw_figure(canvas, pose_keypoints(rng), place)
    else:
        poly = _POLYGONS[shape]
        pts, _ = _fit(poly, (*poly.min(0), *poly.max(0)), place)
        cv2.fillPoly(canvas, [_fixed(pts)], 255, cv2.LINE_8, _SHIFT)
    alpha = cv2.resize(canvas, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return alpha, keypoints
