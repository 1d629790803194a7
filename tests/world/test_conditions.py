"""Condition maps: right shapes and dtypes, and the content sits where the objects are."""
import json

import cv2
import numpy as np
import pytest

from engine.control.maps import canny, sketch_to_scribble
from engine.control.openpose import keypoints_from_json, pose_map
from world import render_seed, scribble


def _near(mask: np.ndarray, pixels: np.ndarray, radius: int) -> float:
    """Fraction of lit pixels within `radius` of the mask's boundary."""
    m = mask.astype(np.uint8)
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    band = cv2.dilate(m, k) - cv2.erode(m, k)
    lit = pixels.any(-1)
    return float((band.astype(bool) & lit).sum() / max(lit.sum(), 1))


def test_canny_edges_lie_on_object_boundaries():
    for seed in range(20):
        r = render_seed(seed, n_objects=2)
        edges = canny(r.image)
        assert edges.shape == (64, 64, 3) and edges.dtype == np.uint8
        assert set(np.unique(edges)) <= {0, 255} and edges.any()
        union = np.logical_or.reduce([lab.mask for lab in r.labels])
        assert _near(union, edges, 2) > 0.95


def test_scribble_follows_outlines():
    for seed in range(20):
        r = render_seed(seed, n_objects=1 + seed % 2)
        s = scribble(r, np.random.default_rng(seed))
        assert s.shape == (64, 64, 3) and s.dtype == np.uint8
        assert 20 < (s[..., 0] > 0).sum() < 64 * 64 * 0.3
        union = np.logical_or.reduce([lab.mask for lab in r.labels])
        assert _near(union, s, 3) > 0.9


@pytest.mark.parametrize("shape", [(300, 500, 4), (300, 300), (4000, 3000, 3), (64, 64, 1)])
def test_sketch_to_scribble_any_canvas(shape):
    canvas = np.full(shape, 255, np.uint8)
    h, w = shape[:2]
    cv2.circle(canvas, (w // 2, h // 2), min(h, w) // 3, (0, 0, 0, 255)[: (shape[2] if len(shape) == 3 else 1)],
               max(1, min(h, w) // 200))
    out = sketch_to_scribble(canvas)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 255}
    lit = out[..., 0] > 0
    assert 40 < lit.sum() < 600  # a thin ring survived, and did not fill in
    assert not lit[32, 32]  # the centre stays empty


def test_sketch_to_scribble_transparent_canvas_is_paper():
    canvas = np.zeros((200, 200, 4), np.uint8)  # fully transparent black: a blank browser canvas
    assert sketch_to_scribble(canvas).max() == 0
    canvas[50:150, 98:102] = (0, 0, 0, 255)
    assert sketch_to_scribble(canvas)[..., 0].sum() > 0


def test_pose_map_colours_near_keypoints():
    r = render_seed(3, shapes=["figure"])
    kp = r.labels[0].keypoints
    m = pose_map([kp])
    assert m.shape == (64, 64, 3) and m.dtype == np.uint8
    lit = m.max(-1) > 40
    ys, xs = np.nonzero(lit)
    d = np.hypot(xs[:, None] - kp[None, :, 0] * 64, ys[:, None] - kp[None, :, 1] * 64).min(1)
    assert lit.sum() > 20 and np.median(d) < 4
    assert (m.std(-1) > 30).sum() > 10  # coloured, not grey
    assert pose_map([]).max() == 0


def test_keypoints_from_json_formats():
    pts = [[0.5, 0.1 + 0.04 * i] for i in range(18)]
    (a,) = keypoints_from_json(json.dumps(pts))
    assert a.shape == (18, 3) and np.allclose(a[:, 2], 1)
    two = keypoints_from_json(json.dumps([pts, [p + [0] for p in pts]]))
    assert len(two) == 2 and two[1][:, 2].sum() == 0
    flat = sum(([x * 512, y * 256, 0.9] for x, y in pts), [])
    (b,) = keypoints_from_json(json.dumps({"people": [{"pose_keypoints_2d": flat}], "canvas_width": 512,
                                           "canvas_height": 256}))
    assert np.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("text", [
    "not json", "[]", "[[0.5, 0.5]]", json.dumps([[0.5, 0.5, 1, 1]] * 18), json.dumps([[3.0, 40.0]] * 18),
    json.dumps({"people": [{"pose_keypoints_2d": [1, 2, 3]}]}), json.dumps({"persons": []}), "42",
])
def test_keypoints_from_json_rejects_malformed(text):
    with pytest.raises(ValueError):
        keypoints_from_json(text)
