"""Simple image measures the lab plots next to guidance strength: saturation, clipping, diversity, adherence; and
the one bootstrap the lab's intervals come from (by prompt when given the prompts, exact at 0 and 1)."""
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


RESAMPLES = 1000


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a proportion `successes` / `n`: never narrower than `level` wants,
    and not a point at 0 or 1 (64 of 64 gives [0.944, 1])."""
    from scipy.special import betaincinv

    tail = (1 - level) / 2
    low = float(betaincinv(successes, n - successes + 1, tail)) if successes > 0 else 0.0
    high = float(betaincinv(successes + 1, n - successes, 1 - tail)) if successes < n else 1.0
    return low, high


def _resampled_means(x: np.ndarray, clusters, level: float, resamples: int, seed: int
                     ) -> tuple[float, float, float]:
    """The mean and its percentile interval over fixed-seed resamples of whole clusters (each value its own cluster
    when `clusters` is None): a resample's mean is its clusters' total over their count of values."""
    if clusters is None:
        sums, counts = x, np.ones_like(x)
    else:
        ids = np.unique(np.asarray(clusters), return_inverse=True)[1].reshape(-1)
        sums, counts = np.bincount(ids, weights=x), np.bincount(ids).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    mean = float(sums.sum() / counts.sum())
    return mean, min(float(low), mean), max(float(high), mean)  # the rounding of sums never leaves the mean out


def _check(clusters, n: int) -> None:
    if clusters is not None and len(clusters) != n:
        raise ValueError(f"one cluster id per value: {len(clusters)} ids for {n} values")


def _check_binary(*arrays: np.ndarray) -> None:
    if not all(np.all((x == 0) | (x == 1)) for x in arrays):
        raise ValueError("binary values are successes, each 0 or 1")


def bootstrap(values, clusters=None, *, binary: bool = False, level: float = 0.95, resamples: int = RESAMPLES,
              seed: int = 0):
    """(mean, low, high): the mean of `values` and its percentile bootstrap interval from a fixed-seed resampling,
    so the same values always give the same interval; None entries are left out, (None, None, None) when none is
    left. With `clusters` (one id per value, e.g. the prompt), whole clusters are resampled: images of one prompt
    go together, so the interval counts the spread between prompts and not only between seeds. With `binary`,
    the values are successes (each 0 or 1, such as adherence) and the interval covers at least the exact
    Clopper-Pearson one, which the bootstrap alone would collapse to a point at 0 or 1."""
    _check(clusters, len(values))
    keep = [i for i, v in enumerate(values) if v is not None]
    x = np.asarray([values[i] for i in keep], np.float64)
    if not x.size:
        return None, None, None
    groups = None if clusters is None else [clusters[i] for i in keep]
    mean, low, high = _resampled_means(x, groups, level, resamples, seed)
    if binary:
        _check_binary(x)
        exact = clopper_pearson(int(x.sum()), x.size, level)
        low, high = min(low, exact[0]), max(high, exact[1])
    return mean, low, high


def paired_difference(a, b, clusters=None, *, binary: bool = False, level: float = 0.95,
                      resamples: int = RESAMPLES, seed: int = 0):
    """(mean, low, high) of mean(a) - mean(b), where a[i] and b[i] are two methods' values on the same
    (prompt, seed): the differences are resampled by cluster (the prompt), so what both methods share cancels.
    With `binary` (successes, each 0 or 1) the interval also covers the exact bound on the difference of the
    discordant shares (pairs won by a, pairs won by b, each Clopper-Pearson at half the error): with no
    discordant pair it is not the point 0 (64 pairs give about +-0.066)."""
    x, y = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if x.shape != y.shape or not x.size:
        raise ValueError(f"paired values come in equal, non-empty lists: {x.size} and {y.size}")
    _check(clusters, x.size)
    mean, low, high = _resampled_means(x - y, clusters, level, resamples, seed)
    if binary:
        _check_binary(x, y)
        half = 1 - (1 - level) / 2
        won = clopper_pearson(int(np.sum(x > y)), x.size, half)
        lost = clopper_pearson(int(np.sum(x < y)), x.size, half)
        low, high = min(low, won[0] - lost[1]), max(high, won[1] - lost[0])
    return mean, low, high


def summary(name: str, values, clusters=None, binary: bool = False) -> dict[str, float | None]:
    """{name, name_low, name_high}: the mean of the per-image values and its 95% bootstrap interval (Nones
    without values)."""
    mean, low, high = bootstrap([] if values is None else list(values), clusters, binary=binary)
    return {name: mean, f"{name}_low": low, f"{name}_high": high}


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
        measures.update(summary(name, per_seed[name], binary=name == "adherence"))
    return {**measures, "diversity": diversity(arrays), "per_seed": per_seed}
