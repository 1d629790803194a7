"""The class-conditional counterpart of the guidance study: on lab-dit, CFG, Perp-CFG, APG and classifier guidance
against their scales, and each compared at the class accuracy CFG reaches at a reference scale.

    python -m evaluation.class_study --n 64 --steps 20 --out runs/class-study

Accuracy is the share of images whose largest detected object has the requested shape (evaluation/eval_class.py);
saturation and clipping are the world's measures of the same images. Matching interpolates each method's accuracy
between its two measured scales around the reference accuracy (the first rising crossing: engine.compare's
matched_scale, the study's and the Compare tab's matcher), then measures there.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from engine.compare import matched_scale
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.request import Request
from world import SHAPES, bootstrap, clipped_fraction, saturation
from world.detect import detect

from .eval_class import PER_BATCH, batch_count

METHODS = {  # label -> (method, scale, classifier scale, values); "s" in a scale slot is the swept scale
    "CFG": ("cfg", "s", 0.0, {}),
    "Perp-CFG": ("perp-cfg", "s", 0.0, {}),
    "APG (eta 0, momentum -0.5)": ("apg", "s", 0.0, {"momentum": -0.5}),
    "classifier guidance (CFG 1)": ("cfg", 1.0, "s", {}),
}
SCALES = {"CFG": (1, 2, 4, 8, 16), "classifier guidance (CFG 1)": (1, 3, 10, 30, 100)}


def settings(label: str, scale: float) -> GuidanceSettings:
    method, s, cs, values = METHODS[label]
    return GuidanceSettings(method, scale if s == "s" else s, classifier_scale=scale if cs == "s" else cs, **values)


def measure(engine: Engine, label: str, scale: float, n: int, steps: int, seed: int = 321) -> dict:
    hits, sats, clips = [], [], []
    guided = settings(label, scale)
    for k in range(batch_count(n)):
        shape = SHAPES[k % len(SHAPES)]
        result = engine.generate(Request(model="lab-dit", class_label=shape, steps=steps, seed=seed + k * PER_BATCH,
                                         num_images=PER_BATCH, guidance=guided,
                                         classifier="lab-classifier" if guided.classifier_scale else None))
        for image in result.images:
            pixels = np.asarray(image)
            _, found = detect(pixels)
            hits.append(bool(found) and found[0].shape == shape)
            sats.append(saturation(pixels))
            clips.append(clipped_fraction(pixels))
    low, high = bootstrap([float(h) for h in hits], binary=True)[1:]
    return {"method": label, "scale": scale, "n": len(hits), "accuracy": float(np.mean(hits)), "accuracy_low": low,
            "accuracy_high": high, "saturation": float(np.mean(sats)), "clipped": float(np.mean(clips))}


def crossing(rows: list[dict], target: float) -> float | None:
    """The scale where accuracy first rises through `target`, linear between measured scales."""
    return matched_scale([r["scale"] for r in rows], [r["accuracy"] for r in rows], target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images per cell (whole rounds of every class)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reference", type=float, default=4.0, help="CFG scale whose accuracy the others match")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    engine = Engine()
    rows = []
    for label in METHODS:
        for scale in SCALES.get(label, SCALES["CFG"]):
            rows.append(measure(engine, label, scale, args.n, args.steps))
            print(rows[-1], flush=True)
    reference = measure(engine, "CFG", args.reference, args.n, args.steps)
    matched = [{**reference, "method": "CFG (reference)"}]
    for label in METHODS:
        if label == "CFG":
            continue
        scale = crossing([r for r in rows if r["method"] == label], reference["accuracy"])
        matched.append(measure(engine, label, round(scale, 2), args.n, args.steps) if scale is not None
                       else {"method": label, "scale": None, "n": 0, "accuracy": None, "accuracy_low": None,
                             "accuracy_high": None, "saturation": None, "clipped": None})
        print(matched[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, table in (("class_cells.csv", rows), ("class_matched.csv", matched)):
        with (args.out / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
