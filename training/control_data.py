"""Rendered scenes with the control maps a ControlNet reads (canny, scribble, pose), made the way the engine makes a
user's: the ControlNet recipe's training and validation batches, and the control evaluation's maps."""

from __future__ import annotations

import numpy as np
import torch

from engine.control.openpose import pose_map
from engine.control.prepare import prepare_control
from world import caption, render, sample_scene, scribble
from world.split import HELD_OUT

TYPES = ("canny", "scribble", "pose")


def control_map(control_type: str, rendered, rng: np.random.Generator) -> np.ndarray:
    """(64, 64, 3) uint8 map of a rendered scene, made the way engine/control/prepare.py makes a user's input."""
    if control_type == "canny":
        return np.asarray(prepare_control(rendered.image, "canny"))  # default thresholds, as for an upload
    if control_type == "scribble":
        return scribble(rendered, rng)  # drawn on paper, then the user-sketch path: white strokes on black
    if control_type == "pose":
        return pose_map([label.keypoints for label in rendered.labels if label.keypoints is not None], size=64)
    raise ValueError(f"Unknown control type '{control_type}'; choose one of {', '.join(TYPES)}.")


def control_batch(control_type: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray, list[str], list]:
    """(images (n, 64, 64, 3), control maps (n, 64, 64, 3), captions, RenderedScenes); held-out combos excluded."""
    rng = np.random.default_rng(seed)
    shapes = ("figure",) if control_type == "pose" else None
    images = np.empty((n, 64, 64, 3), np.uint8)
    maps = np.empty((n, 64, 64, 3), np.uint8)
    captions, renders = [], []
    for i in range(n):
        scene = sample_scene(rng, n_objects=1 + int(rng.random() < 1 / 3), shapes=shapes, exclude=HELD_OUT)
        rendered = render(scene, rng)
        images[i], maps[i] = rendered.image, control_map(control_type, rendered, rng)
        captions.append(caption(scene, rng))
        renders.append(rendered)
    return images, maps, captions, renders


def to_control(maps: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) maps to float (N, 3, H, W) in [0, 1], as the pipeline's image processor feeds them."""
    return torch.from_numpy(maps).permute(0, 3, 1, 2).float() / 255
