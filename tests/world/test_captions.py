"""Captions: the parser recovers what the generator wrote, and reports words it does not know."""
import re

import numpy as np

from world import VOCABULARY, canonical_caption, caption, parse_caption, sample_scene


def _same_objects(parsed, scene):
    """Every parsed attribute that is set agrees with the scene's object at that position."""
    by_position = {o.position: o for o in scene.objects}
    assert len(parsed.objects) == len(scene.objects)
    for p in parsed.objects:
        truth = by_position[p.position]
        for attr in ("shape", "colour", "size"):
            assert getattr(p, attr) in (None, getattr(truth, attr))
        assert p.shape == truth.shape and p.colour == truth.colour


def test_canonical_round_trip():
    rng = np.random.default_rng(0)
    for i in range(300):
        scene = sample_scene(rng, n_objects=1 + i % 2)
        parsed = parse_caption(canonical_caption(scene))
        assert parsed.unknown_words == [] and parsed.background == scene.background
        assert sorted(parsed.objects, key=lambda o: o.position) == sorted(scene.objects, key=lambda o: o.position)


def test_paraphrase_round_trip():
    rng = np.random.default_rng(1)
    sizes_dropped = 0
    for i in range(1000):
        scene = sample_scene(rng, n_objects=1 + i % 2)
        text = caption(scene, rng)
        parsed = parse_caption(text)
        assert parsed.unknown_words == [], text
        assert parsed.background in (None, scene.background)
        _same_objects(parsed, scene)
        sizes_dropped += sum(o.size is None for o in parsed.objects)
        assert set(re.findall(r"[a-z]+", text)) <= set(VOCABULARY)
    assert sizes_dropped > 50  # omissions really happen


def test_canonical_form_and_tolerance():
    parsed = parse_caption("A small RED circle, on the left... and a large blue square on the right on a gray background!")
    assert [(o.size, o.colour, o.shape, o.position) for o in parsed.objects] == [
        ("small", "red", "circle", "left"), ("large", "blue", "square", "right")]
    assert parsed.background == "gray" and parsed.unknown_words == []
    assert parse_caption("a star in the top left corner").objects[0].position == "top left"


def test_unknown_words_are_reported():
    parsed = parse_caption("a shiny red circle next to a dog")
    assert parsed.unknown_words == ["shiny", "next", "dog"]
    assert parsed.objects[0].colour == "red"
