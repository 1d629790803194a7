"""The DiT recipe: the same losses as before the shared loop, a DiTPipeline export the engine reproduces (and steers
with a classifier), stages that start from another run or grow deeper as the identity, and seeded label dropout."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DiTPipeline, DiTTransformer2DModel
from safetensors.torch import load_file

from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.request import Request
from training import dit
from training.checkpoint import start_from
from training.classifier import build_classifier
from training.common import MODELS, RUNS
from training.loop import Schedule
from world import SHAPES

from .conftest import longer

# Per-step losses of this size recorded from the recipe before it shared the loop (commit efbf04a).
LOSSES = [0.9961931109428406, 0.7800009250640869, 0.5373950600624084]


@pytest.fixture(scope="module")
def trained(vae_folder, pool_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    config = dit.DitConfig(schedule=Schedule(steps=3, batch_size=4, lr=1e-3, warmup=1), pool=pool_folder,
                           vae=vae_folder, layers=2, heads=2, run=root / "run", out=root / "dit")
    return config, dit.train(config)


def test_dit_trains_as_before_resumes_and_exports_a_dit_pipeline(trained, tmp_path):
    config, losses = trained
    assert losses == pytest.approx(LOSSES, rel=1e-5)
    pipe = DiTPipeline.from_pretrained(config.out)
    assert pipe.labels == {name: i for i, name in enumerate(SHAPES)}
    assert pipe.transformer.config.num_embeds_ada_norm == len(SHAPES)
    assert dit.export_from_checkpoint(replace(config, out=tmp_path / "again")) == 3
    again = DiTPipeline.from_pretrained(tmp_path / "again").transformer.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in pipe.transformer.state_dict().items())
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        dit.export_from_checkpoint(replace(config, run=tmp_path / "nothing-here"))
    more = dit.train(longer(config, 4, out=tmp_path / "more"))
    assert len(more) == 1  # resumed from step 3


def test_the_engine_draws_what_the_pipeline_draws_and_guides_with_a_classifier(trained, tmp_path):
    config, _ = trained
    pipe = DiTPipeline.from_pretrained(config.out)
    # DiTPipeline hard-codes the null id 1000, so it can only run this model without CFG; there the engine
    # must give the same pixels.
    expected = pipe(class_labels=[pipe.labels["star"]], num_inference_steps=3, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    engine = Engine()
    result = engine.generate(Request(model=str(config.out), class_label="star", steps=3, seed=5,
                                     guidance=GuidanceSettings("cfg", 1.0)))
    got = np.asarray(result.images[0]).astype(np.int64)
    assert np.abs(got - np.round(expected * 255).astype(np.int64)).max() <= 1
    build_classifier(torch.device("cpu"), (8, 16)).save_pretrained(tmp_path / "clf")
    result = engine.generate(Request(model=str(config.out), class_label="circle", classifier=str(tmp_path / "clf"),
                                     steps=3, num_images=2,
                                     guidance=GuidanceSettings("cfg", 4.0, classifier_scale=10.0)))
    assert [im.size for im in result.images] == [(64, 64)] * 2
    assert len(result.class_probs) == 3 and all(0 <= p <= 1 for p in result.class_probs[-1])


def test_a_stage_starts_from_its_init_runs_averaged_weights(trained, tmp_path):
    config, _ = trained
    stage = replace(config, schedule=Schedule(steps=1, batch_size=4, lr=0.0, warmup=0), init=config.run,
                    run=tmp_path / "stage", out=tmp_path / "stage-out")
    assert len(dit.train(stage)) == 1
    init = load_file(str(config.run / "checkpoint.safetensors"))
    got = load_file(str(stage.run / "checkpoint.safetensors"))
    weights = [k for k in got if k.startswith("transformer.") and got[k].dtype.is_floating_point]
    assert weights and all(torch.equal(got[k], init[f"ema.{k}"]) for k in weights)  # lr 0: the init's EMA
    with pytest.raises(ValueError, match="does not fit this transformer"):
        dit.train(replace(stage, run=tmp_path / "bad", layers=1))


def test_a_deeper_stage_starts_as_exactly_its_init(trained, tmp_path):
    config, _ = trained
    dit.train(replace(config, schedule=Schedule(steps=1, batch_size=4, lr=0.0, warmup=0), init=config.run,
                      layers=config.layers + 2, run=tmp_path / "deeper", out=tmp_path / "out"))
    deeper = DiTTransformer2DModel.from_pretrained(tmp_path / "out" / "transformer").eval()
    init = config.transformer(torch.device("cpu"))
    assert start_from(config.run, {"transformer": init}) == []
    assert len(deeper.transformer_blocks) == len(init.transformer_blocks) + 2
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([5, 500, 990]), torch.tensor([0, 3, dit.NULL_ID])
    with torch.no_grad():
        got, expected = (m.eval()(x, timestep=t, class_labels=y).sample for m in (deeper, init))
    assert torch.allclose(got, expected, atol=1e-6)  # the appended blocks are the identity until trained
    assert deeper.transformer_blocks[-1].norm1.linear.weight.abs().max() == 0


def test_label_dropout_is_seeded_explicit_and_uses_the_null_id():
    labels = torch.zeros(10_000, dtype=torch.long)
    first = dit.drop_labels(labels, torch.Generator().manual_seed(1))
    assert torch.equal(first, dit.drop_labels(labels, torch.Generator().manual_seed(1)))
    assert set(first.tolist()) == {0, dit.NULL_ID}
    assert abs((first == dit.NULL_ID).float().mean().item() - dit.P_UNCOND) < 0.02
    transformer = dit.build_transformer(torch.device("cpu")).train()
    for block in transformer.transformer_blocks:  # adaLN-zero: every block starts as the identity
        assert not block.norm1.linear.weight.any()
        table = block.norm1.emb.class_embedder.embedding_table.weight  # classes at unit scale, not 0.02
        assert 0.8 < table.std().item() < 1.2 and torch.cdist(table, table).fill_diagonal_(99).min() > 5
    with torch.no_grad():
        for p in transformer.parameters():  # random weights, so every label reaches the output
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
        x, t, y = torch.randn(64, 4, 16, 16), torch.full((64,), 500), torch.arange(64) % len(SHAPES)
        trained = transformer(x, t, y).sample
        assert torch.equal(trained, transformer.eval()(x, t, y).sample)  # diffusers' own label dropout is off


def test_the_command_line_builds_the_config_with_its_defaults(monkeypatch, tmp_path):
    called = []
    monkeypatch.setattr(dit, "train", called.append)
    monkeypatch.setattr(dit, "export_from_checkpoint", called.append)
    dit.main([])
    dit.main(["--export-only", "--layers", "8", "--run", str(tmp_path)])
    assert called == [dit.DitConfig(), dit.DitConfig(layers=8, run=tmp_path)]
    assert called[0].schedule == Schedule(steps=6000, batch_size=64, lr=1e-3, warmup=200)
    assert (called[0].layers, called[0].heads, called[0].patch_size, called[0].class_std, called[0].run,
            called[0].out) == (6, 4, 2, 1.0, RUNS / "dit", MODELS / "lab-dit")


@pytest.mark.slow
def test_dit_loss_falls(vae_folder, pool_folder, tmp_path):
    losses = dit.train(dit.DitConfig(schedule=Schedule(steps=40, batch_size=8, lr=1e-3, warmup=5), pool=pool_folder,
                                     vae=vae_folder, run=tmp_path / "run", out=tmp_path / "dit"))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
