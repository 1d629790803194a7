"""How well a generated image follows its control map (ControlNet: Zhang, Rao and Agrawala, 2023): edge F1 for
canny and scribble maps, keypoint hit rate for poses. Pure numpy and OpenCV."""
from dataclasses import dataclass

import cv2
import numpy as np

from engine.control.maps import canny
from .segment import find_objects
from .vocab import IMAGE_SIZE


@dataclass(frozen=True)
class EdgeScore:
    """Edge agreement at a pixel tolerance: precision over the generated edges, recall over the control's."""

    precision: float
    recall: float
    f1: float


def _edge_mask(edges: np.ndarray) -> np.ndarray:
    """Bool (H, W) of an edge map given as bool/uint8, (H, W) or (H, W, 3) white on black."""
    e = np.asarray(edges)
    if e.ndim == 3:
        e = e.max(axis=2)
    if e.ndim != 2:
        raise ValueError(f"Expected an edge map of shape (H, W) or (H, W, 3), got {np.shape(edges)}.")
    return e > 127 if e.dtype == np.uint8 else e.astype(bool)


def within(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Bool map of the pixels whose Euclidean distance to the nearest pixel of `mask` is <= tolerance."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance <= tolerance


def edge_f1(generated: np.ndarray, control_edges: np.ndarray, tolerance: float = 2, *, low: int = 100,
            high: int = 200) -> EdgeScore:
    """Canny edges of the generated image against the control's edge map, each matched within `tolerance` px.

    precision = share of generated edge pixels within `tolerance` of a control edge pixel; recall = share of
    control edge pixels within `tolerance` of a generated one; F1 their harmonic mean. The thresholds default to
    the lab's canny preprocessing (engine/control/maps.py). Two empty maps agree (F1 1); one empty map scores 0.
    """
    made = canny(generated, low, high)[..., 0] > 0  # (H, W)
    wanted = _edge_mask(control_edges)  # (H, W)
    if made.shape != wanted.shape:
        raise ValueError(f"The image is {made.shape} but the edge map is {wanted.shape}; they must match.")
    if not made.any() and not wanted.any():
        return EdgeScore(1.0, 1.0, 1.0)
    precision = float((made & within(wanted, tolerance)).sum() / max(made.sum(), 1))
    recall = float((wanted & within(made, tolerance)).sum() / max(wanted.sum(), 1))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return EdgeScore(precision, recall, f1)


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Bool (64, 64): every object the world's segmentation finds against the background colour, united."""
    _, detections = find_objects(image)
    mask = np.zeros(image.shape[:2], bool)
    for d in detections:
        mask |= d.mask
    return mask


def keypoint_pixels(keypoints) -> np.ndarray:
    """(K, 2) integer (x, y) pixels of the visible keypoints of one (18, 3) person or a list of them (0..1)."""
    people = np.asarray(keypoints, np.float64).reshape(-1, 18, 3)
    visible = people.reshape(-1, 3)
    visible = visible[visible[:, 2] > 0, :2]
    # Keypoints are in continuous coordinates: pixel i covers [i, i + 1) of the 64-pixel grid.
    return np.clip(np.floor(visible * IMAGE_SIZE), 0, IMAGE_SIZE - 1).astype(int)


def pose_hit_rate(generated: np.ndarray, keypoints, tolerance: float = 3) -> float:
    """Share of the given visible keypoints lying on the generated figure's mask or within `tolerance` px of it.

    The mask is the union of the objects the world's segmentation finds (foreground against the background
    colour), so a limb that came out detached still counts; a request with no visible keypoint is an error.
    """
    points = keypoint_pixels(keypoints)  # (K, 2)
    if len(points) == 0:
        raise ValueError("No visible keypoints were given; a pose needs at least one.")
    near = within(foreground_mask(generated), tolerance)  # (64, 64)
    return float(near[points[:, 1], points[:, 0]].mean())
