"""Untrained models with the lab's geometry and classes, saved as the evaluations load them: a Stable Diffusion, a
ControlNet copied from its UNet, a DiT over the world's shapes on its VAE, and a noise-aware classifier."""

import pytest
import torch
from diffusers import ControlNetModel

from tests.training.tiny_lab import tiny_lab_sd
from training import dit
from training.classifier import build_classifier


@pytest.fixture(scope="session")
def lab_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-models")
    sd = tiny_lab_sd()
    sd.save_pretrained(root / "sd", safe_serialization=True)
    ControlNetModel.from_unet(sd.unet, conditioning_embedding_out_channels=(16, 32, 64)).save_pretrained(
        root / "controlnet")
    dit.export(sd.vae, dit.build_transformer(torch.device("cpu"), num_layers=1, num_attention_heads=2), root / "dit")
    build_classifier(torch.device("cpu"), (8, 16)).save_pretrained(root / "classifier")
    return root
