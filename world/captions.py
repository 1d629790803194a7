"""Captions: a small grammar with paraphrases, its parser, and the vocabulary a tokenizer needs."""
import re
from dataclasses import dataclass, field

import numpy as np

from .scene import ObjectSpec, Scene
from .vocab import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES

# Surface words per attribute value; the first is canonical.
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
SHAPE_WORDS = {s: (s,) for s in SHAPES} | {"figure": ("figure", "person")}
COLOUR_WORDS = {c: (c,) for c in COLOURS}
BACKGROUND_WORDS = {b: (b,) for b in BACKGROUNDS} | {"gray": ("gray", "grey")}
WHERE = {
    "left": ("on the left", "on the left side", "to the left"),
    "right": ("on the right", "on the right side", "to the right"),
    "top": ("at the top", "near the top", "at the top of the image"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the image"),
    "center": ("in the center", "in the centre", "in the middle"),
} | {
    f"{v} {h}": (f"in the {v} {h} corner", f"in the {u} {h} corner", f"at the {v} {h}")
    for v, u in (("top", "upper"), ("bottom", "lower"))
    for h in ("left", "right")
}
BACKGROUND_PHRASES = ("on a {} background", "against a {} background")

# Words that carry no attribute but belong to the grammar.
FUNCTION_WORDS = ("a", "an", "the", "on", "at", "in", "to", "near", "of", "and", "side", "corner", "image",
                  "background", "against")
_SIZE_OF = {w: k for k, ws in SIZE_WORDS.items() for w in ws}
_SHAPE_OF = {w: k for k, ws in SHAPE_WORDS.items() for w in ws} | {s + "s": s for s in SHAPES}
_BACKGROUND_OF = {w: k for k, ws in BACKGROUND_WORDS.items() for w in ws}
# "a navy circle" parses to colour "navy" although the palette cannot draw it: the request is kept as asked
# and the evaluator scores it as unmet, rather than the word being dropped.
_COLOUR_OF = _BACKGROUND_OF | {w: k for k, ws in COLOUR_WORDS.items() for w in ws}
_PLACE_WORDS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom", "left": "left",
                "right": "right", "center": "center", "centre": "center", "middle": "center"}

VOCABULARY = tuple(sorted(
    set(FUNCTION_WORDS) | set(_SIZE_OF) | set(_SHAPE_OF) | set(_COLOUR_OF) | set(_BACKGROUND_OF) | set(_PLACE_WORDS)
))


@dataclass
class ParsedCaption:
    """What a caption asks for; None fields were not mentioned. Unknown words are kept, never dropped."""

    objects: list[ObjectSpec]
    background: str | None = None
    unknown_words: list[str] = field(default_factory=list)


def _object_phrase(spec: ObjectSpec, rng, paraphrase: bool) -> str:
    """'a small red circle on the left', possibly with synonyms and a dropped size."""
    pick = (lambda ws: ws[rng.integers(len(ws))]) if paraphrase else (lambda ws: ws[0])
    words = []
    if spec.size and not (paraphrase and rng.random() < 0.15):  # dropped sizes teach "unspecified"
        words.append(pick(SIZE_WORDS[spec.size]))
    if spec.colour:
        words.append(pick(COLOUR_WORDS[spec.colour]))
    words.append(pick(SHAPE_WORDS[spec.shape]))
    if spec.position:
        words.append(pick(WHERE[spec.position]))
    return "a " + " ".join(words)


def caption(scene: Scene, rng: np.random.Generator, *, paraphrase: bool = True) -> str:
    """A caption of the scene: canonical when paraphrase=False, else synonyms, order and omissions vary."""
    objects = list(scene.objects)
    if paraphrase and len(objects) == 2 and rng.random() < 0.5:
        objects.reverse()
    text = " and ".join(_object_phrase(o, rng, paraphrase) for o in objects)
    if not paraphrase:
        return f"{text} on a {scene.background} background"
    if rng.random() < 0.6:
        phrase = BACKGROUND_PHRASES[rng.integers(len(BACKGROUND_PHRASES))]
        words = BACKGROUND_WORDS[scene.background]
        text += " " + phrase.format(words[rng.integers(len(words))])
    return text


def canonical_caption(scene: Scene) -> str:
    """The one canonical caption of a scene."""
    return caption(scene, np.random.default_rng(0), paraphrase=False)


def _position(words: list[str]) -> str | None:
    """Combine place words ('upper', 'left') into a grid position name."""
    vertical = next((w for w in words if w in ("top", "bottom")), None)
    horizontal = next((w for w in words if w in ("left", "right")), None)
    if vertical and horizontal:
        return f"{vertical} {horizontal}"
    return vertical or horizontal or ("center" if "center" in words else None)


def _parse_object(tokens: list[str]) -> ObjectSpec | None:
    """Attributes of one 'and'-separated segment; the first mention of each attribute wins."""
    size = next((_SIZE_OF[t] for t in tokens if t in _SIZE_OF), None)
    colour = next((_COLOUR_OF[t] for t in tokens if t in _COLOUR_OF), None)
    shape = next((_SHAPE_OF[t] for t in tokens if t in _SHAPE_OF), None)
    position = _position([_PLACE_WORDS[t] for t in tokens if t in _PLACE_WORDS])
    if size is colour is shape is position is None:
        return None
    return ObjectSpec(shape=shape, colour=colour, size=size, position=position)


def parse_caption(text: str) -> ParsedCaption:
    """Parse a caption of the grammar (case and punctuation ignored) into objects, background, unknown words."""
    tokens = re.findall(r"[a-z]+", text.lower())
    unknown = [t for t in tokens if t not in VOCABULARY]
    background = None
    for i, t in enumerate(tokens):
        if t == "background" and i > 0 and tokens[i - 1] in _BACKGROUND_OF:
            background = _BACKGROUND_OF[tokens[i - 1]]
            tokens[i - 1:i + 1] = ["", ""]  # consumed: the colour is the background's, not an object's
    segments, current = [], []
    for t in tokens:
        if t == "and":
            segments.append(current)
            current = []
        elif t:
            current.append(t)
    segments.append(current)
    objects = [o for o in map(_parse_object, segments) if o is not None]
    return ParsedCaption(objects, background, unknown)
