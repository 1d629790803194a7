"""Control maps from user inputs, in ControlNet's conventions: Canny edges of a picture, a scribble from a sketch.

The world's training conditions go through these same functions, so a user's map matches what the lab's
ControlNets were trained on."""
import cv2
import numpy as np

SCRIBBLE_SIZE = 64  # the lab's models' image size; scribbles are made at it, then resized to the model's
INK_THRESHOLD = 64  # 0..255 darkness that counts as a stroke on the user's canvas


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


def sketch_to_scribble(canvas: np.ndarray, size: int = SCRIBBLE_SIZE) -> np.ndarray:
    """Dark strokes on a light canvas of any size -> size x size x 3 uint8 white strokes on black (ControlNet's
    scribble convention)."""
    ink = (255 - _to_grey(canvas)) > INK_THRESHOLD  # invert: strokes become foreground
    h, w = ink.shape
    side = max(h, w)  # pad to a square with paper so the drawing keeps its aspect ratio
    square = np.zeros((side, side), np.float32)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = ink
    coverage = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    # A pixel is a stroke when at least half a canvas pixel's width of ink crosses it: close to max-pooling,
    # so thin strokes on a huge canvas survive, without every faint touch fattening the line.
    factor = max(side / size, 1.0)
    strokes = coverage > min(0.25, 0.5 / factor)
    return np.repeat((strokes * 255).astype(np.uint8)[..., None], 3, axis=2)



def canny(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges (uint8 HxWx3, white on black) of a uint8 RGB image; colour gradients count, as in controlnet_aux."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected a uint8 HxWx3 image, got {image.dtype} {image.shape}.")
    edges = cv2.Canny(image, low, high)
    return np.repeat(edges[..., None], 3, axis=2)
