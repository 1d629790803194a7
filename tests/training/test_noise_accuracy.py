"""The classifier's accuracy by noise level, on held-out scenes freshly rendered and encoded."""

import torch

from engine.models.classifier import NoiseAwareClassifier
from training.noise_accuracy import NOISE_LEVELS, accuracy_by_noise, held_out_latents
from world import SHAPES


def test_held_out_latents_are_fresh_encoded_single_objects(vae_folder):
    latents, labels = held_out_latents(vae_folder, 5)
    assert latents.shape == (5, 4, 16, 16) and labels.shape == (5,)
    assert torch.equal(labels, held_out_latents(vae_folder, 5)[1])  # seeded
    assert set(labels.tolist()) <= set(range(len(SHAPES)))


def test_accuracy_is_measured_at_every_level_with_the_same_noise():
    torch.manual_seed(0)
    model = NoiseAwareClassifier(class_names=list(SHAPES), block_out_channels=(8, 16), time_embed_dim=16,
                                 norm_num_groups=4).eval()
    latents, labels = torch.randn(12, 4, 16, 16), torch.arange(12) % len(SHAPES)
    accuracy = accuracy_by_noise(model, latents, labels)
    assert list(accuracy) == list(NOISE_LEVELS) and all(0 <= a <= 1 for a in accuracy.values())
    assert accuracy == accuracy_by_noise(model, latents, labels)
