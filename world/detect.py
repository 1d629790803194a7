"""Detect objects in a generated image: segment them, then name each one's shape."""
import numpy as np

from .classify import classify_shape
from .segment import Detection, find_objects


def detect(image: np.ndarray) -> tuple[str, list[Detection]]:
    """Background name and the objects found with shape, colour, size and position, largest first."""
    background, found = find_objects(image)
    for d in found:
        d.shape = classify_shape(d.alpha, d.bbox)
    return background, found
