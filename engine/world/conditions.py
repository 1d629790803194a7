"""Condition maps for ControlNets, in ControlNet's conventions: canny edges, scribbles, OpenPose skeletons."""
import cv2
import numpy as np

from .openpose import keypoints_from_json, pose_map  # noqa: F401  (re-exported)
from .scribble import scribble, sketch_to_scribble  # noqa: F401  (re-exported)


def canny(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges (uint8 HxWx3, white on black) of a uint8 RGB image; colour gradients count, as in controlnet_aux."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected a uint8 HxWx3 image, got {image.dtype} {image.shape}.")
    edges = cv2.Canny(image, low, high)
    return np.repeat(edges[..., None], 3, axis=2)
