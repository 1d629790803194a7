"""Held-out (colour, shape, position) combinations that training data never shows, to test composition."""
from .vocab import COLOURS, POSITIONS, SHAPES


def _held_out() -> frozenset[tuple[str, str, str]]:
    """Every combo whose vocab indices satisfy (colour + 4*shape + 2*position) % 11 == 0: 44 of 486 (9%)."""
    # The modular rule spreads held-out combos evenly, so each one's pairs (colour, shape), (colour, position)
    # and (shape, position) are all still seen in training (tests/world/test_scene.py checks this).
    return frozenset(
        (c, s, p)
        for ci, c in enumerate(COLOURS)
        for si, s in enumerate(SHAPES)
        for pi, p in enumerate(POSITIONS)
        if (ci + 4 * si + 2 * pi) % 11 == 0
    )


HELD_OUT = _held_out()


def is_held_out(spec) -> bool:
    """Whether an ObjectSpec's (colour, shape, position) is in the held-out split."""
    return (spec.colour, spec.shape, spec.position) in HELD_OUT
