"""Segment a (possibly blurry, noisy) 64x64 image into background and objects with colour, size and place."""
from dataclasses import dataclass, field

import cv2
import numpy as np

from .vocab import BACKGROUNDS, COLOURS, SIZE_THRESHOLD, position_of

MIN_AREA = 10  # pixels; smaller blobs are noise, not objects (a small figure covers ~40)
COARSE_DE = 18.0  # Lab distance from the background that marks a pixel as maybe-foreground

_COLOUR_NAMES = list(COLOURS)
_COLOUR_LAB = None
_BG_NAMES = list(BACKGROUNDS)
_BG_LAB = None


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """Lab (L 0..100) of uint8 RGB pixels via cv2, shape (..., 3) float32."""
    a = np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0
    return cv2.cvtColor(a, cv2.COLOR_RGB2Lab).reshape(np.shape(rgb))


def _palettes():
    """Lab values of the named colours, computed once."""
    global _COLOUR_LAB, _BG_LAB
    if _COLOUR_LAB is None:
        _COLOUR_LAB = to_lab(np.array(list(COLOURS.values()), np.uint8))
        _BG_LAB = to_lab(np.array(list(BACKGROUNDS.values()), np.uint8))
    return _COLOUR_LAB, _BG_LAB


@dataclass
class Detection:
    """One object found in an image: named attributes plus the measurements they came from."""

    colour: str
    size: str
    position: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    area: int
    mask: np.ndarray = field(repr=False)  # (H, W) bool, at half contrast
    alpha: np.ndarray = field(repr=False)  # (H, W) float32 0..1, soft silhouette
    shape: str | None = None  # named by the shape classifier (classify.py)


def background_of(image: np.ndarray) -> tuple[str, np.ndarray]:
    """Nearest named background and the measured Lab background colour (median of the 2-pixel border)."""
    border = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                             image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])
    bg_lab = to_lab(np.median(border, 0).astype(np.uint8))
    _, palette = _palettes()
    return _BG_NAMES[int(np.argmin(np.linalg.norm(palette - bg_lab, axis=1)))], bg_lab


def _colour_name(core_rgb: np.ndarray, exclude: str) -> str:
    """Nearest named object colour to the median core pixel, never the background's own colour."""
    lab = to_lab(np.median(core_rgb, 0).astype(np.uint8))
    palette, _ = _palettes()
    d = np.linalg.norm(palette - lab, axis=1)
    if exclude in COLOURS:
        d[_COLOUR_NAMES.index(exclude)] = np.inf
    return _COLOUR_NAMES[int(np.argmin(d))]


def find_objects(image: np.ndarray) -> tuple[str, list[Detection]]:
    """Background name and the objects found (shape not yet named), largest first."""
    if image.shape != (64, 64, 3) or image.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 image of shape (64, 64, 3), got {image.dtype} {image.shape}.")
    bg_name, bg_lab = background_of(image)
    # A 3x3 blur averages out pixel noise before thresholding; objects are much larger than 3 px.
    dist = np.linalg.norm(to_lab(cv2.GaussianBlur(image, (3, 3), 0.6)) - bg_lab, axis=-1)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((dist > COARSE_DE).astype(np.uint8), connectivity=8)
    found = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < MIN_AREA:
            continue
        found.append(_measure(image, dist, labels == i, bg_name))
    found = [d for d in found if d is not None]
    return bg_name, sorted(found, key=lambda d: -d.area)


def _measure(image, dist, region, bg_name) -> Detection | None:
    """Refine one component at half its own contrast and name its colour, size and position."""
    d = dist[region]
    contrast = np.percentile(d, 90)
    core = region & (dist >= 0.75 * contrast)
    colour = _colour_name(image[core], bg_name)
    # Half contrast is where an anti-aliased edge sits, so the box matches the drawn extent.
    mask = region & (dist >= 0.5 * contrast)
    if mask.sum() < MIN_AREA:
        return None
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    extent = max(x1 - x0, y1 - y0)
    bbox = (int(x0), int(y0), int(x1), int(y1))
    grown = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    alpha = np.clip(dist / contrast, 0.0, 1.0) * grown  # soft silhouette: edges keep their partial coverage
    return Detection(
        colour=colour,
        size="small" if extent < SIZE_THRESHOLD else "large",
        position=position_of((x0 + x1) / 2, (y0 + y1) / 2),
        bbox=bbox,
        area=int(mask.sum()),
        alpha=alpha.astype(np.float32),
        mask=mask,
    )
