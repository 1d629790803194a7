"""Control metrics on rendered scenes: an image agrees with its own maps and disagrees with other scenes'."""
import numpy as np
import pytest

from engine.control.maps import canny
from world import degrade, render_seed, scribble
from world.control_metrics import edge_f1, keypoint_pixels, pose_hit_rate, within

SEEDS = range(30)


def test_within_is_a_euclidean_band():
    mask = np.zeros((64, 64), bool)
    mask[32, 32] = True
    band = within(mask, 2)
    assert band[32, 34] and band[30, 32] and band[33, 33]  # distance 2, 2 and sqrt(2)
    assert not band[32, 35] and not band[34, 34]  # distance 3 and 2.83
    assert not within(np.zeros((64, 64), bool), 2).any()


def test_an_image_matches_its_own_canny_exactly():
    for seed in SEEDS:
        r = render_seed(seed, n_objects=1 + seed % 2)
        score = edge_f1(r.image, canny(r.image))
        assert score.f1 == score.precision == score.recall == 1.0


def test_edge_f1_tolerates_blur_and_noise_but_not_a_shift_or_another_scene():
    rng = np.random.default_rng(0)
    own, shifted, other = [], [], []
    for seed in SEEDS:
        r, o = render_seed(seed, n_objects=1 + seed % 2), render_seed(seed + 1000, n_objects=1 + seed % 2)
        edges = canny(r.image)
        own.append(edge_f1(degrade(r.image, rng), edges).f1)
        shifted.append(edge_f1(np.roll(r.image, 6, axis=1), edges).f1)
        other.append(edge_f1(o.image, edges).f1)
    assert np.mean(own) > 0.95
    assert np.mean(shifted) < 0.5 and np.mean(other) < 0.25


def test_a_scene_matches_its_scribble_within_two_pixels():
    rng = np.random.default_rng(0)
    scores = [edge_f1(r.image, scribble(r, rng)).f1 for r in (render_seed(s) for s in SEEDS)]
    assert np.mean(scores) > 0.9


def test_edge_f1_of_empty_maps():
    blank = np.full((64, 64, 3), 128, np.uint8)
    assert edge_f1(blank, np.zeros((64, 64), bool)).f1 == 1.0
    assert edge_f1(blank, canny(render_seed(0).image)).f1 == 0.0
    with pytest.raises(ValueError, match="must match"):
        edge_f1(blank, np.zeros((32, 32), bool))


def test_a_figure_hits_its_own_keypoints_and_misses_others():
    own, other = [], []
    for seed in SEEDS:
        r = render_seed(seed, shapes=("figure",))
        o = render_seed(seed + 1000, shapes=("figure",))
        own.append(pose_hit_rate(r.image, r.labels[0].keypoints))
        other.append(pose_hit_rate(r.image, o.labels[0].keypoints))
    assert min(own) == 1.0
    assert np.mean(other) < 0.5


def test_pose_hit_rate_counts_visible_keypoints_only():
    r = render_seed(3, shapes=("figure",))
    kp = r.labels[0].keypoints.copy()
    assert len(keypoint_pixels(kp)) == 18
    kp[:9, :2] = 0.0  # move half the points to the top-left corner, far from this figure
    assert pose_hit_rate(r.image, kp) == 0.5
    kp[:9, 2] = 0  # hidden points do not count
    assert pose_hit_rate(r.image, kp) == 1.0
    kp[:, 2] = 0
    with pytest.raises(ValueError, match="No visible keypoints"):
        pose_hit_rate(r.image, kp)
