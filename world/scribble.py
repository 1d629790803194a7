"""Scribble conditions: a fake hand-drawn sketch of a rendered scene, made into a map the way a user's sketch is."""
import cv2
import numpy as np

from engine.control.maps import sketch_to_scribble

from .scene import RenderedScene
from .vocab import IMAGE_SIZE

SKETCH_CANVAS = 256  # simulated drawing canvas for `scribble`, like a small browser canvas


def _wobbly(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Jitter an outline and smooth it with a circular moving average, like an unsteady hand."""
    n = len(points)
    wobble = rng.normal(0.0, 0.9, size=(n, 2))
    k = max(3, n // 12) | 1
    kernel = np.ones(k) / k
    pad = np.concatenate([wobble[-k:], wobble, wobble[:k]])
    smooth = np.stack([np.convolve(pad[:, i], kernel, mode="same")[k:-k] for i in range(2)], 1)
    return points + smooth * 2.5


def scribble(rendered: RenderedScene, rng: np.random.Generator) -> np.ndarray:
    """Hand-drawn-looking outlines of the scene's objects, passed through the same path as a user's sketch."""
    scale = SKETCH_CANVAS / IMAGE_SIZE
    paper = np.full((SKETCH_CANVAS, SKETCH_CANVAS), 255, np.uint8)
    for label in rendered.labels:
        big = cv2.resize(label.mask.astype(np.uint8), (SKETCH_CANVAS, SKETCH_CANVAS), interpolation=cv2.INTER_LINEAR)
        contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for contour in contours:
            pts = contour[:, 0, :].astype(np.float64)
            if len(pts) < 8:
                continue
            pts = _wobbly(pts[:: max(1, len(pts) // 64)], rng)
            start = rng.integers(len(pts))
            stop = int(len(pts) * rng.uniform(0.92, 1.08))  # people under- or overshoot when closing a loop
            stroke = np.roll(pts, -start, axis=0)[np.arange(stop) % len(pts)]
            thickness = int(rng.integers(2, int(scale) + 2))  # thin pen; the max-pool above makes it 1-2 px at 64
            cv2.polylines(paper, [np.round(stroke).astype(np.int32)], False, 0, thickness, cv2.LINE_AA)
    return sketch_to_scribble(paper, size=IMAGE_SIZE)
