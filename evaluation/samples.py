"""A labelled grid of samples for a model card: one row per prompt, one column per seed.
`python -m evaluation.samples --model lab-sd --out grid.png`."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.request import Request

PROMPTS = [
    "a large red circle on the left",
    "a small blue square at the top",
    "a large yellow star in the center",
    "a small green triangle in the bottom right corner",
    "a large pink heart on the right on a navy background",
    "a large white figure in the center on a black background",
    "a small purple circle on the left and a large orange square on the right",
]


def grid(model: str, out: Path, seeds: int = 6, scale: float | None = None, steps: int = 25) -> None:
    engine = Engine()
    label_width, cell = 330, 64
    canvas = Image.new("RGB", (label_width + seeds * cell, len(PROMPTS) * cell), "white")
    draw = ImageDraw.Draw(canvas)
    for row, prompt in enumerate(PROMPTS):
        guidance = GuidanceSettings("cfg", scale) if scale else GuidanceSettings("cfg", engine.model_spec(
            Request(model=model, prompt=prompt)).default_scale)
        result = engine.generate(Request(model=model, prompt=prompt, num_images=seeds, steps=steps, seed=1000,
                                         guidance=guidance))
        draw.text((4, row * cell + 26), prompt, fill="black")
        for col, image in enumerate(result.images):
            canvas.paste(image.resize((cell, cell)), (label_width + col * cell, row * cell))
    canvas.save(out)
    print(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="lab-sd")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    grid(args.model, args.out)


if __name__ == "__main__":
    main()
