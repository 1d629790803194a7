"""Classifier guidance as a wrapper: it raises log p(y | x) of a toy noise-aware classifier."""

import torch
from diffusers import DiTPipeline

from engine.models.adapters import ClassDenoiser
from engine.guiders import GuidanceSettings
from engine.sampler import class_log_prob_grad, guided_model, sample, with_classifier_guidance
from engine.models.schedulers import make_scheduler


class ToyClassifier(torch.nn.Module):
    """A fixed linear classifier of latents: logits = W x, whatever the timestep."""

    def __init__(self, shape, num_classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(num_classes, int(torch.tensor(shape).prod()), generator=g) * 0.1)

    def forward(self, x, t):
        return x.flatten(1) @ self.weight.T


def run(pipe, classifier, scale, cfg_scale=1.0, label=1):
    transformer = pipe.transformer
    shape = (4, 4, 8, 8)
    labels = torch.full((4,), label)
    denoiser = ClassDenoiser(transformer, labels, transformer.config.num_embeds_ada_norm, 4)
    model_fn = guided_model(denoiser, GuidanceSettings("cfg", cfg_scale).build())
    record = []
    if scale:
        model_fn = with_classifier_guidance(model_fn, classifier, labels, scale, record)
    scheduler = make_scheduler("ddim", pipe.scheduler.config)
    scheduler.set_timesteps(10)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = sample(model_fn, scheduler, latents, prediction_type="epsilon")
    _, log_p = class_log_prob_grad(classifier, out, torch.tensor(0), labels)
    return log_p.mean().item(), record


def test_classifier_guidance_raises_log_prob(tiny_folders):
    pipe = DiTPipeline.from_pretrained(tiny_folders["dit"])
    classifier = ToyClassifier((4, 8, 8))
    none, _ = run(pipe, classifier, 0.0)
    guided, record = run(pipe, classifier, 20.0)
    assert guided > none + 0.5
    assert len(record) == 10 and record[0].shape == (4,)
    # composes with CFG on top
    with_cfg, _ = run(pipe, classifier, 20.0, cfg_scale=3.0)
    without, _ = run(pipe, classifier, 0.0, cfg_scale=3.0)
    assert with_cfg > without + 0.5


def test_gradient_flows_through_classifier_only(tiny_folders):
    pipe = DiTPipeline.from_pretrained(tiny_folders["dit"])
    classifier = ToyClassifier((4, 8, 8))
    run(pipe, classifier, 10.0)
    assert all(p.grad is None for p in pipe.transformer.parameters())
