"""Measure the lab's text-to-image models with the world's evaluator: adherence, compositional generalisation, and
what the guidance scale does to adherence, saturation and clipping. `python -m evaluation.evaluate text --n 200`."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.models.registry import resolve
from engine.request import Request
from world import canonical_caption, clipped_fraction, evaluate, is_held_out, sample_scene, saturation

PER_CAPTION = 4  # seeds per caption, generated as one batch


def scenes(kind: str, n: int, seed: int) -> list:
    """n // PER_CAPTION scenes: single objects in training combos, held-out combos, or two objects."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < max(1, n // PER_CAPTION):
        scene = sample_scene(rng, n_objects=2 if kind == "two" else 1, exclude=frozenset())
        held = any(is_held_out(o) for o in scene.objects)
        if (kind == "held-out") == held:
            out.append(scene)
    return out


def run(engine: Engine, model: str, kind: str, n: int, scale: float, steps: int, seed: int = 123) -> dict:
    """Generate PER_CAPTION images for each caption and score them; returns rates and image measures."""
    rows, sats, clips = [], [], []
    for k, scene in enumerate(scenes(kind, n, seed)):
        prompt = canonical_caption(scene)
        result = engine.generate(Request(model=model, prompt=prompt, steps=steps, seed=seed + PER_CAPTION * k,
                                         num_images=PER_CAPTION, guidance=GuidanceSettings("cfg", scale)))
        for image in result.images:
            array = np.asarray(image)
            ev = evaluate(array, scene)
            rows.append({a: ev.attribute(a) for a in ("shape", "colour", "size", "position")}
                        | {"all": ev.all_correct, "both": ev.both_correct, "count": ev.count})
            sats.append(saturation(array))
            clips.append(clipped_fraction(array))
    rate = {key: float(np.mean([r[key] for r in rows if r[key] is not None])) if any(
        r[key] is not None for r in rows) else None for key in rows[0]}
    return {"kind": kind, "scale": scale, "n": len(rows), **rate, "saturation": float(np.mean(sats)),
            "clipped": float(np.mean(clips))}


def fmt(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def text_report(model: str, n: int, steps: int, scales: list[float]) -> list[dict]:
    engine = Engine()
    default = resolve(model, "text").default_scale
    results = []
    started = time.time()
    for kind in ("single", "held-out", "two"):
        results.append(run(engine, model, kind, n, default, steps))
    for scale in scales:
        if scale != default:
            results.append(run(engine, model, "single", n, scale, steps))
    print(f"model {model}, {steps} DDIM steps, CFG; {n} samples per row; {time.time() - started:.0f} s")
    print(f"{'captions':>9} {'scale':>6} {'n':>4} {'colour':>7} {'shape':>7} {'size':>7} {'position':>8} "
          f"{'all':>7} {'both':>7} {'saturation':>10} {'clipped':>8}")
    for r in sorted(results, key=lambda r: (r["kind"] != "single", r["kind"], r["scale"])):
        print(f"{r['kind']:>9} {r['scale']:>6g} {r['n']:>4} {fmt(r['colour']):>7} {fmt(r['shape']):>7} "
              f"{fmt(r['size']):>7} {fmt(r['position']):>8} {fmt(r['all']):>7} {fmt(r['both']):>7} "
              f"{r['saturation']:>10.3f} {r['clipped']:>8.4f}")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="lab-sd")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--scales", type=float, nargs="*", default=[1.0, 15.0])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    results = text_report(args.model, args.n, args.steps, args.scales)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
