"""Scribble conditions: preprocess a user's sketch, and fake a hand-drawn sketch of a rendered scene."""
import cv2
import numpy as np

from .scene import RenderedScene
from .vocab import IMAGE_SIZE

INK_THRESHOLD = 64  # 0..255 darkness that counts as a stroke on the user's canvas
SKETCH_CANVAS = 256  # simulated drawing canvas for `scribble`, like a small browser canvas


def _to_grey(canvas: np.ndarray) -> np.ndarray:
    """Grey uint8 of an RGB, RGBA (transparent = white paper) or grey canvas."""
    c = np.asarray(canvas)
    if c.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 canvas, got {c.dtype}.")
    if c.ndim == 3 and c.shape[2] == 1:
        c = c[..., 0]
    if c.ndim == 2:
        return c
    if c.ndim != 3 or c.shape[2] not in (3, 4):
        raise ValueError(f"Expected a grey, RGB or RGBA canvas, got shape {c.shape}.")
    grey = cv2.cvtColor(np.ascontiguousarray(c[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    if c.shape[2] == 4:  # browsers leave unpainted pixels transparent: composite over white paper
        a = c[..., 3].astype(np.float32) / 255.0
        grey = grey * a + 255.0 * (1.0 - a)
    return np.round(grey).astype(np.uint8)


def sketch_to_scribble(canvas: np.ndarray) -> np.ndarray:
    """Dark strokes on a light canvas of any size -> 64x64x3 uint8 white strokes on black (ControlNet scribble)."""
    ink = (255 - _to_grey(canvas)) > INK_THRESHOLD  # invert: strokes become foreground
    h, w = ink.shape
    side = max(h, w)  # pad to a square with paper so the drawing keeps its aspect ratio
    square = np.zeros((side, side), np.float32)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = ink
    coverage = cv2.resize(square, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    # A pixel is a stroke when at least half a canvas pixel's width of ink crosses it: close to max-pooling,
    # so thin strokes on a huge canvas survive, without every faint touch fattening the line.
    factor = max(side / IMAGE_SIZE, 1.0)
    strokes = coverage > min(0.25, 0.5 / factor)
    return np.repeat((strokes * 255).astype(np.uint8)[..., None], 3, axis=2)


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
    return sketch_to_scribble(paper)
