"""Measure the evaluator against true labels: `python -m world.evaluate --n 1000` prints the tables."""
import argparse

import numpy as np

from .scene import render_seed
from .score import ATTRIBUTES, Evaluation, ObjectScore, degrade, evaluate  # noqa: F401  (re-exported)


def accuracy(*, n: int, n_objects: int, seed: int, degraded: bool) -> dict[str, float]:
    """Agreement of the evaluator with true labels on n fresh scenes; per object for attributes, per scene else."""
    rng = np.random.default_rng(seed)
    hits = {a: 0 for a in ATTRIBUTES} | {"count": 0, "background": 0, "all_correct": 0}
    for i in range(n):
        rendered = render_seed(seed + i, n_objects=n_objects)
        image = degrade(rendered.image, rng) if degraded else rendered.image
        result = evaluate(image, rendered.scene)
        for a in ATTRIBUTES:
            hits[a] += sum(bool(getattr(o, a)) for o in result.objects) / n_objects
        hits["count"] += result.count
        hits["background"] += result.background
        hits["all_correct"] += result.all_correct
    return {k: v / n for k, v in hits.items()}


def main(argv=None) -> None:
    """Print the evaluator's accuracy tables: 1 and 2 objects, clean and degraded."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--n", type=int, default=1000, help="scenes per table row")
    parser.add_argument("--seed", type=int, default=7_000_000, help="first scene seed (tuning used other seeds)")
    args = parser.parse_args(argv)
    columns = ATTRIBUTES + ("count", "background", "all_correct")
    print(f"{'objects':>7} {'images':>10} " + " ".join(f"{c:>11}" for c in columns))
    for n_objects in (1, 2):
        for degraded in (False, True):
            acc = accuracy(n=args.n, n_objects=n_objects, seed=args.seed + 1_000_000 * n_objects, degraded=degraded)
            label = "blur+noise" if degraded else "clean"
            print(f"{n_objects:>7} {label:>10} " + " ".join(f"{acc[c]:>11.3f}" for c in columns))
    print("blur+noise = Gaussian blur sigma 0.7 px, then Gaussian noise std 8/255.")


if __name__ == "__main__":
    main()
