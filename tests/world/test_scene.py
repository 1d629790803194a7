"""Scenes: determinism, placement rules, labels and the held-out split."""
from itertools import product

import numpy as np

from world import HELD_OUT, SIZES, is_held_out, render_batch, render_seed, sample_scene
from world.vocab import COLOURS, POSITIONS, SHAPES, position_of


def test_same_seed_same_pixels_and_captions():
    a, b = render_seed(123, n_objects=2), render_seed(123, n_objects=2)
    assert np.array_equal(a.image, b.image) and a.scene == b.scene
    ia, sa, ca = render_batch(7, 16, n_objects=(1, 2))
    ib, sb, cb = render_batch(7, 16, n_objects=(1, 2))
    assert np.array_equal(ia, ib) and sa == sb and ca == cb


def test_different_seeds_differ():
    images = [render_seed(s).image for s in range(20)]
    assert len({im.tobytes() for im in images}) == 20


def test_labels_match_specs():
    for seed in range(300):
        r = render_seed(seed, n_objects=1 + seed % 2)
        assert r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8
        for label in r.labels:
            x0, y0, x1, y1 = label.bbox
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert position_of((x0 + x1) / 2, (y0 + y1) / 2) == label.spec.position
            lo, hi = SIZES[label.spec.size]
            assert lo - 1.5 <= max(x1 - x0, y1 - y0) <= hi + 1.5
            assert (label.keypoints is not None) == (label.spec.shape == "figure")
        if len(r.labels) == 2:
            a, b = r.labels
            assert a.spec.position != b.spec.position
            assert not (a.mask & b.mask).any()


def test_figure_keypoints_inside_the_figure_box():
    r = render_seed(5, shapes=["figure"])
    kp, (x0, y0, x1, y1) = r.labels[0].keypoints, r.labels[0].bbox
    assert kp.shape == (18, 3)
    assert np.all(kp[:, 0] * 64 >= x0 - 1) and np.all(kp[:, 0] * 64 <= x1 + 1)
    assert np.all(kp[:, 1] * 64 >= y0 - 1) and np.all(kp[:, 1] * 64 <= y1 + 1)


def test_held_out_never_sampled_when_excluded():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        scene = sample_scene(rng, n_objects=2, exclude=HELD_OUT)
        assert not any(is_held_out(o) for o in scene.objects)


def test_held_out_split_keeps_every_pair_in_training():
    combos = set(product(COLOURS, SHAPES, POSITIONS))
    train = combos - HELD_OUT
    assert 0.07 <= len(HELD_OUT) / len(combos) <= 0.11
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert {(c[i], c[j]) for c in combos} == {(c[i], c[j]) for c in train}


def test_shapes_restriction_and_background_contrast():
    rng = np.random.default_rng(1)
    for _ in range(500):
        scene = sample_scene(rng, shapes=["star"])
        assert scene.objects[0].shape == "star"
        assert scene.objects[0].colour != scene.background
