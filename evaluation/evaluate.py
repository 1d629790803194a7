"""Measure the lab's own models with the world's evaluator: `python -m evaluation.evaluate text --n 200` (text to
image: adherence, held-out combinations, guidance scale), `class` (DiT and classifier guidance) or `control`
(ControlNets); each task takes its own options (`python -m evaluation.evaluate class --help`)."""

from __future__ import annotations

import argparse

from . import eval_class, eval_control, eval_text

TASKS = {"text": eval_text, "class": eval_class, "control": eval_control}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("task", choices=list(TASKS))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the task's own options")
    args = parser.parse_args(argv)
    TASKS[args.task].main(args.options)


if __name__ == "__main__":
    main()
