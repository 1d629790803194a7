"""The ControlNets' training maps: made as the engine makes a user's, light on black, held-out scenes excluded."""

import numpy as np
import pytest

from engine.control.prepare import prepare_control
from training.control_data import TYPES, control_batch, control_map, to_control
from world.split import is_held_out


@pytest.mark.parametrize("control_type", TYPES)
def test_training_maps_look_like_the_inference_preprocessing(control_type):
    images, maps, captions, renders = control_batch(control_type, 5, 12)
    assert images.shape == maps.shape == (12, 64, 64, 3) and maps.dtype == np.uint8
    assert all(c for c in captions)
    assert not any(is_held_out(o) for r in renders for o in r.scene.objects)
    lit = maps.max(axis=3) > 0  # (12, 64, 64)
    assert lit.any(axis=(1, 2)).all() and lit.mean() < 0.25  # light content on a black ground
    if control_type == "canny":
        for image, m in zip(images, maps):
            np.testing.assert_array_equal(m, np.asarray(prepare_control(image, "canny")))
    if control_type == "scribble":  # white strokes on black, exactly as sketch_to_scribble turns a user's sketch
        assert set(np.unique(maps)) <= {0, 255} and (maps[..., :1] == maps).all()
    if control_type == "pose":
        assert all(o.shape == "figure" for r in renders for o in r.scene.objects)
        assert (maps[..., 0] != maps[..., 1]).any()  # OpenPose's coloured limbs
    control = to_control(maps)
    assert control.shape == (12, 3, 64, 64) and 0 <= control.min() and control.max() <= 1


def test_an_unknown_control_type_is_refused_with_the_known_ones():
    _, _, _, renders = control_batch("canny", 0, 1)
    with pytest.raises(ValueError, match="Unknown control type 'depth'; choose one of canny, scribble, pose."):
        control_map("depth", renders[0], np.random.default_rng(0))
