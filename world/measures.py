"""Simple image measures the lab plots next to guidance strength: saturation, clipping, diversity, adherence, with
a bootstrap interval for the mean of the per-image ones."""
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


def bootstrap_interval(values, level: float = 0.95, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: `resamples` draws with replacement from a fixed-seed generator,
    so the same values always give the same interval; one value gives (value, value)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(1)  # (resamples,)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summary(name: str, values) -> dict[str, float | None]:
    """{name, name_low, name_high}: the mean of the per-image values and its 95% bootstrap interval (None without
    values)."""
    if values is None or len(values) == 0:
        return {name: None, f"{name}_low": None, f"{name}_high": None}
    low, high = bootstrap_interval(values)
    return {name: float(np.mean(values)), f"{name}_low": low, f"{name}_high": high}


PER_IMAGE = ("saturation", "clipped", "adherence")


def cell_measures(images, prompt: str | None = None) -> dict:
    """One comparison cell's images (its seeds): per image saturation, clipping and adherence (1 when the evaluator
    finds every object of `prompt` right, judged only when a prompt of the world's vocabulary is given), each as
    mean with a 95% bootstrap interval, the per-image values under "per_seed", and diversity across the images."""
    arrays = [np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in images]
    per_seed: dict[str, list[float] | None] = {"saturation": [saturation(a) for a in arrays],
                                                "clipped": [clipped_fraction(a) for a in arrays], "adherence": None}
    if prompt is not None:
        parsed = parse_caption(prompt)
        per_seed["adherence"] = [float(evaluate(a, parsed).all_correct) for a in arrays]
    measures: dict = {}
    for name in PER_IMAGE:
        measures.update(summary(name, per_seed[name]))
    return {**measures, "diversity": diversity(arrays), "per_seed": per_seed}
