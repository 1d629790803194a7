"""The latent pool: what it holds, reloaded, and the shape labels of its single-object scenes."""

import torch

from training import latents
from world import SHAPES


def test_the_pool_holds_posteriors_of_its_scenes_and_draws_scaled_latents(pool_folder):
    data = latents.load(pool_folder)
    assert len(data) == 48 and data.mean.shape == data.std.shape == (48, 4, 16, 16)
    one, two = data.indices(n_objects=1), data.indices(n_objects=2)
    assert len(one) + len(two) == 48 and len(one) > len(two) > 0  # a third with two objects, on average
    gen = torch.Generator().manual_seed(0)
    drawn = data.latents(torch.arange(4), gen)
    assert torch.equal(drawn, data.latents(torch.arange(4), torch.Generator().manual_seed(0)))  # seeded
    assert latents.ensure(pool_folder, 999, pool_folder / "no-vae-needed").scenes == data.scenes  # not rebuilt


def test_shape_labels_are_the_single_object_scenes_in_shapes_order(pool_folder):
    data = latents.load(pool_folder)
    index, labels = latents.shape_labels(data)
    assert len(index) == sum(len(s.objects) == 1 for s in data.scenes) > 0
    assert all(SHAPES[y] == data.scenes[i].objects[0].shape for i, y in zip(index, labels))
