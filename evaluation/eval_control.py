"""Measure the lab's ControlNets (Zhang, Rao and Agrawala, 2023) with the world's yardsticks: do the outputs follow
the control map while the prompt still sets the colour? Each row compares a control scale with scale 0 (the base
model). `python -m evaluation.evaluate control --n 200 --types canny scribble pose`.

Edge F1 (world/control_metrics.py, 2 px tolerance) compares the output's Canny edges with the Canny edges of
the rendered scene the control came from. For canny that is the control map itself; for scribble it is the scene
the sketch outlines, so a net that copies the wobbly strokes is not rewarded over one that draws the object (on
rendered scenes the two references agree to 0.01 F1). Pose hit rate: share of the figures' keypoints on the
output's foreground within 3 px. Colour, position, shape: the world evaluator against the scene."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields

import numpy as np
from PIL import Image

from engine.control.maps import canny
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.models.registry import resolve
from engine.request import ControlSpec, Request
from training.control_data import TYPES, control_batch
from world import canonical_caption, evaluate
from world.control_metrics import edge_f1, pose_hit_rate

SEED = 80_000_000  # scene seeds no training step uses (training/controlnet.py SEEDS and VALIDATION_SEED)
DEFAULT_CONTROL_SCALE = next(f.default for f in fields(ControlSpec) if f.name == "scale")
COLUMNS = ("edge_f1", "precision", "recall", "pose_hit", "colour", "position", "shape")


def score(image: np.ndarray, rendered, control_type: str) -> dict:
    """Edge agreement with the scene, keypoint hits for poses, and the evaluator's attributes for one output."""
    edges = edge_f1(image, canny(rendered.image))
    people = [label.keypoints for label in rendered.labels if label.keypoints is not None]
    ev = evaluate(image, rendered.scene)
    return {"edge_f1": edges.f1, "precision": edges.precision, "recall": edges.recall,
            "pose_hit": pose_hit_rate(image, people) if control_type == "pose" else None,
            "colour": ev.attribute("colour"), "position": ev.attribute("position"), "shape": ev.attribute("shape")}


def run(engine: Engine, control_type: str, controlnet: str, *, model: str, n: int, control_scale: float,
        per_condition: int, steps: int, cfg: float) -> dict:
    """Generate `per_condition` seeds for each of n // per_condition control maps and average the scores."""
    count = max(1, n // per_condition)
    _, maps, _, renders = control_batch(control_type, SEED + 1000 * TYPES.index(control_type), count)
    rows = []
    for k, (control, rendered) in enumerate(zip(maps, renders)):
        spec = ControlSpec(Image.fromarray(control), control_type, controlnet, control_scale)
        result = engine.generate(Request(model=model, prompt=canonical_caption(rendered.scene), controls=(spec,),
                                         steps=steps, seed=SEED + per_condition * k, num_images=per_condition,
                                         guidance=GuidanceSettings("cfg", cfg)))
        rows += [score(np.asarray(image), rendered, control_type) for image in result.images]
    means = {c: float(np.mean([r[c] for r in rows if r[c] is not None])) if any(r[c] is not None for r in rows)
             else None for c in COLUMNS}
    return {"type": control_type, "control_scale": control_scale, "n": len(rows), **means}


def fmt(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def report(types, controlnets: str, *, model: str, n: int, scales, per_condition: int, steps: int) -> list[dict]:
    """Print one table: a row per control type and control scale."""
    engine = Engine()
    cfg = resolve(model, "text").default_scale
    started = time.time()
    results = [run(engine, t, controlnets.replace("{}", t), model=model, n=n, control_scale=s,
                   per_condition=per_condition, steps=steps, cfg=cfg) for t in types for s in scales]
    print(f"base {model}, ControlNets {controlnets}, {steps} DDIM steps, CFG {cfg:g}, {per_condition} seeds per "
          f"control map; {time.time() - started:.0f} s")
    print(f"{'control':>8} {'scale':>6} {'n':>4} " + " ".join(f"{c:>9}" for c in COLUMNS))
    for r in results:
        values = " ".join(f"{fmt(r[c]):>9}" for c in COLUMNS)
        print(f"{r['type']:>8} {r['control_scale']:>6g} {r['n']:>4} {values}")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="images per row")
    parser.add_argument("--types", nargs="+", choices=TYPES, default=list(TYPES))
    parser.add_argument("--model", default="lab-sd", help="the base text-to-image model")
    parser.add_argument("--controlnets", default="lab-controlnet-{}",
                        help="name or folder pattern, {} becomes the control type (e.g. runs/cn-trial-{}-export)")
    parser.add_argument("--scales", type=float, nargs="+", default=[DEFAULT_CONTROL_SCALE, 0.0],
                        help="control (conditioning) scales; 0 is the base model")
    parser.add_argument("--per-condition", type=int, default=8, help="seeds per control map, one batch")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    results = report(args.types, args.controlnets, model=args.model, n=args.n, scales=args.scales,
                     per_condition=args.per_condition, steps=args.steps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
