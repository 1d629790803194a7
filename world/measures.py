"""Simple image measures the lab plots next to guidance strength: saturation, clipping, diversity."""
import cv2
import numpy as np

from .captions import parse_caption
from .score import evaluate


def saturation(image: np.ndarray) -> float:
    """Mean HSV saturation in 0..1 of a uint8 RGB image (or a batch of them)."""
    flat = np.asarray(image, np.uint8).reshape(-1, 1, 3)
    return float(cv2.cvtColor(flat, cv2.COLOR_RGB2HSV)[..., 1].mean() / 255.0)


def clipped_fraction(image: np.ndarray) -> float:
    """Fraction of channel values at exactly 0 or 255: over-guided samples saturate to the extremes."""
    x = np.asarray(image)
    return float(np.mean((x == 0) | (x == 255)))


def diversity(images) -> float:
    """Mean pairwise mean-absolute pixel difference in 0..1 over a set of uint8 images; 0 for fewer than two."""
    x = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
    n = len(x)
    if n < 2:
        return 0.0
    total = sum(np.abs(x[i + 1:] - x[i]).mean(1).sum() for i in range(n - 1))
    return float(total / (n * (n - 1) / 2))


def cell_measures(images, prompt: str | None = None) -> dict[str, float | None]:
    """One comparison cell's images (its seeds): mean saturation and clipping, diversity across them, and adherence
    (the fraction the evaluator finds all-correct for `prompt`) when a prompt of the world's vocabulary is given."""
    arrays = [np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in images]
    adherence = None
    if prompt is not None:
        parsed = parse_caption(prompt)
        adherence = float(np.mean([evaluate(a, parsed).all_correct for a in arrays]))
    return {"saturation": float(np.mean([saturation(a) for a in arrays])),
            "clipped": float(np.mean([clipped_fraction(a) for a in arrays])),
            "diversity": diversity(arrays), "adherence": adherence}
