"""Measure class conditioning with the world's shape detector: DiT shape accuracy under CFG (Ho and Salimans, 2021),
under classifier guidance (Dhariwal and Nichol, 2021) alone and on top of CFG, lab-sd steered toward a shape by the
classifier, and the classifier's own accuracy per noise level. `python -m evaluation.evaluate class --n 200`."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.models.registry import resolve
from engine.request import Request
from training.noise_accuracy import accuracy_by_noise, held_out_latents, print_accuracy
from world import SHAPES
from world.detect import detect

PER_BATCH = 8  # images per request, all of one class
CFG_SCALES = (1.0, 2.0, 4.0, 8.0)
CLASSIFIER_SCALES = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)
CFG_UNDER_CLASSIFIER = (1.0, 4.0)  # CFG scales that classifier guidance is stacked on
# A caption of the grammar's other attributes with no shape word ("object" is outside the vocabulary), so the
# shape is left to the text model and the classifier.
TEXT_PROMPT = "a large red object in the center on a gray background"


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def batch_count(n: int) -> int:
    """Batches for at least n images: whole rounds of PER_BATCH images of every class, so classes stay balanced."""
    return max(1, math.ceil(n / (PER_BATCH * len(SHAPES)))) * len(SHAPES)


def shape_accuracy(engine: Engine, n: int, steps: int, seed: int, **request) -> dict:
    """Generate at least n images, classes in turn; a hit is an image whose largest detected object has the class's
    shape (the evaluator's matching would pick any of several blobs, which flatters noisy images)."""
    batches = batch_count(n)
    hits, single, probs = [], [], []
    for k in range(batches):
        label = SHAPES[k % len(SHAPES)]
        result = engine.generate(Request(class_label=label, steps=steps, seed=seed + k * PER_BATCH,
                                         num_images=PER_BATCH, **request))
        for image in result.images:
            _, found = detect(np.asarray(image))  # largest first
            hits.append(bool(found) and found[0].shape == label)
            single.append(len(found) == 1)
        if result.class_probs:
            probs.extend(result.class_probs[-1])  # classifier p(y | x_t) at the last step
    return {"n": len(hits), "accuracy": _mean(hits), "one_object": _mean(single), "p_classifier": _mean(probs)}


def rows(engine: Engine, n: int, steps: int, dit: str, classifier: str, sd: str | None, seed: int = 321) -> list[dict]:
    """Every configuration of the report, one dict per row."""
    plan = [("dit", dit, "", s, 0.0, None) for s in CFG_SCALES]
    plan += [("dit", dit, "", cfg, cs, classifier) for cfg in (0.0, *CFG_UNDER_CLASSIFIER) for cs in CLASSIFIER_SCALES
             if cfg == 0.0 or cs > 0]
    if sd is not None:
        sd_scale = resolve(sd, "text").default_scale
        plan += [("sd", sd, TEXT_PROMPT, sd_scale, cs, classifier) for cs in CLASSIFIER_SCALES]
    out = []
    for kind, model, prompt, cfg, cs, clf in plan:
        started = time.time()
        guidance = GuidanceSettings("cfg", cfg, classifier_scale=cs)
        row = shape_accuracy(engine, n, steps, seed, model=model, prompt=prompt, classifier=clf, guidance=guidance)
        out.append({"kind": kind, "model": model, "cfg": cfg, "classifier_scale": cs, **row,
                    "seconds": round(time.time() - started, 1)})
        print(_format(out[-1]), flush=True)
    return out


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def _format(r: dict) -> str:
    return (f"{r['kind']:>4} {r['cfg']:>5g} {r['classifier_scale']:>10g} {r['n']:>4} {_fmt(r['accuracy'])} "
            f"{_fmt(r['one_object']):>10} {_fmt(r['p_classifier']):>12} {r['seconds']:>6g}")


def report(n: int, steps: int, dit: str = "lab-dit", classifier: str = "lab-classifier", sd: str | None = "lab-sd",
           eval_n: int = 600, engine: Engine | None = None) -> dict:
    """Print the tables and return their rows; the text rows are skipped when `sd` is None or missing."""
    engine = engine or Engine()
    if sd is not None:
        try:
            resolve(sd, "text")
        except EngineError as exc:
            print(f"skipping the text rows: {exc}")
            sd = None
    print(f"shape accuracy, {steps} DDIM steps; cfg 0 = the DiT's unconditional branch alone; sd rows use the "
          f"prompt '{TEXT_PROMPT}'; chance = {1 / len(SHAPES):.3f}")
    print(f"{'kind':>4} {'cfg':>5} {'classifier':>10} {'n':>4} {'acc':>6} {'one object':>10} {'p_classifier':>12} "
          f"{'sec':>6}")
    table = rows(engine, n, steps, dit, classifier, sd)
    noise = {}
    if eval_n:
        vae_folder = Path(resolve(dit, "class").source) / "vae"  # the latent space the DiT and classifier share
        model = engine.store.get(resolve(classifier, "classifier")).obj
        noise = accuracy_by_noise(model, *held_out_latents(vae_folder, eval_n))
        print_accuracy(noise)
    return {"rows": table, "classifier_accuracy_by_t": noise}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200,
                        help="images per row at least (rounded up to whole rounds of classes: 200 gives 240)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--dit", default="lab-dit")
    parser.add_argument("--classifier", default="lab-classifier")
    parser.add_argument("--sd", default="lab-sd", help="text model to steer with the classifier ('' to skip)")
    parser.add_argument("--eval-n", type=int, default=600, help="held-out scenes for the per-noise accuracy")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    started = time.time()
    results = report(args.n, args.steps, args.dit, args.classifier, args.sd or None, args.eval_n)
    print(f"{time.time() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
