"""The noise-aware classifier: logits per timestep, safetensors round trip, label ids, and guidance through it."""

import pytest
import torch

from engine.models.classifier import NoiseAwareClassifier
from engine.errors import EngineError
from engine.generate import Engine
from engine.request import Request
from engine.guiders import GuidanceSettings
from engine.models.loading import ModelStore
from engine.models.registry import resolve
from engine.sampler import class_log_prob_grad

NAMES = ["circle", "square", "triangle"]  # the tiny DiT's classes (tests/tiny_models.py)


def tiny_classifier(seed: int = 0) -> NoiseAwareClassifier:
    torch.manual_seed(seed)
    model = NoiseAwareClassifier(class_names=NAMES, block_out_channels=(8, 16), time_embed_dim=16, norm_num_groups=4)
    with torch.no_grad():
        model.head.weight.mul_(10)  # confident enough that its gradient steers a 6-step run visibly
    return model.eval()


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier") / "tiny-classifier"
    tiny_classifier().save_pretrained(folder, safe_serialization=True)
    return folder


def test_logits_per_sample_for_every_timestep_form():
    model = tiny_classifier()
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        per_sample = model(x, torch.tensor([500, 500, 500]))
        assert per_sample.shape == (3, len(NAMES))
        assert torch.allclose(model(x, 500), per_sample)
        assert torch.allclose(model(x, torch.tensor(500)), per_sample)
        assert not torch.allclose(model(x, 0), per_sample)  # the timestep enters every block
        assert model(x[:, :, :8, :8], 10).shape == (3, len(NAMES))  # fully convolutional, pooled


def test_default_size_is_small_for_a_backward_pass_per_step():
    model = NoiseAwareClassifier(class_names=NAMES + ["star", "heart", "figure"])
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    assert megabytes < 2


def test_save_load_round_trip_is_safetensors_and_loads_in_the_engine(classifier_folder):
    assert (classifier_folder / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(classifier_folder.glob("*.bin"))
    loaded = NoiseAwareClassifier.from_pretrained(classifier_folder, dtype=torch.float32, use_safetensors=True)
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, 300), tiny_classifier()(x, 300))
    spec = resolve(str(classifier_folder), "classifier")
    assert spec.kind == "classifier"
    assert ModelStore().get(spec).obj.class_names == NAMES


def test_label_ids_and_one_sentence_errors():
    model = tiny_classifier()
    assert model.label_id("triangle") == 2
    assert model.label_id(1) == 1
    assert model.label_id("0") == 0
    with pytest.raises(EngineError, match="does not know the class 'hexagon'; it knows: circle, square, triangle"):
        model.label_id("hexagon")
    with pytest.raises(EngineError, match="from 0 to 2, not 3"):
        model.label_id(3)


def test_gradient_in_half_precision_comes_back_in_the_input_dtype():
    model = tiny_classifier().to(torch.bfloat16)
    x = torch.randn(2, 4, 16, 16)
    grad, log_p = class_log_prob_grad(model, x, torch.tensor(700), torch.tensor([0, 2]))
    assert grad.shape == x.shape and grad.dtype == torch.float32
    assert torch.isfinite(grad).all() and (log_p <= 0).all()


def test_engine_classifier_guidance_raises_the_classifier_probability(tiny_folders, classifier_folder):
    engine = Engine()

    def final_prob(scale: float) -> float:
        result = engine.generate(Request(model=str(tiny_folders["dit"]), class_label="square", steps=6,
                                         num_images=4, classifier=str(classifier_folder),
                                         guidance=GuidanceSettings("cfg", 1.0, classifier_scale=scale)))
        assert len(result.class_probs) == 6 and len(result.class_probs[0]) == 4
        return sum(result.class_probs[-1]) / 4

    assert final_prob(100.0) > final_prob(0.0) + 0.05
