"""Few-step smoke runs of the class recipes on a tiny pool: the loss falls, checkpoints resume, the exports load
with diffusers and in the engine, and the class evaluation runs end to end."""

import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DiTPipeline, StableDiffusionPipeline
from safetensors.torch import save_file

from engine.classifier import NoiseAwareClassifier
from engine.generate import Engine, Request
from engine.guidance import GuidanceSettings
from world import SHAPES
from training import classifier, dit, eval_class, vae
from training import pool as latent_pool

from ..tiny_models import tiny_sd


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A 5-step VAE and a 64-scene pool encoded by it."""
    root = tmp_path_factory.mktemp("class-recipes")
    vae.train(5, batch_size=4, full_res_steps=1, out=root / "vae", run=root / "vae-run", warmup=2)
    latent_pool.build(64, root / "vae", root / "pool")
    return root


@pytest.fixture(scope="module")
def separable(root):
    """The tiny pool's scenes with latents that are a fixed random pattern per shape: a 5-step VAE's latents say
    too little about shape for a few dozen steps, this signal any working classifier recipe learns."""
    data = latent_pool.load(root / "pool")
    patterns = torch.randn(len(SHAPES) + 1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = [SHAPES.index(s.objects[0].shape) if len(s.objects) == 1 else len(SHAPES) for s in data.scenes]
    mean = (patterns[ids] / data.scaling).half()  # (N, 4, 16, 16): unit-variance latents once scaled
    folder = root / "separable"
    folder.mkdir()
    save_file({"mean": mean, "std": torch.full_like(mean, 0.05)}, str(folder / "latents.safetensors"))
    shutil.copy(root / "pool" / "scenes.json", folder / "scenes.json")
    return folder


@pytest.fixture(scope="module")
def classifier_losses(root, separable):
    return classifier.train(40, separable, batch_size=32, run=root / "clf-run", out=root / "clf", warmup=5,
                            vae_folder=root / "vae")


@pytest.fixture(scope="module")
def dit_losses(root):
    return dit.train(40, root / "pool", root / "vae", batch_size=8, run=root / "dit-run", out=root / "dit", warmup=5)


def test_shape_labels_are_the_single_object_scenes_in_shapes_order(root):
    data = latent_pool.load(root / "pool")
    index, labels = classifier.shape_labels(data)
    assert len(index) == sum(len(s.objects) == 1 for s in data.scenes) > 0
    assert all(SHAPES[y] == data.scenes[i].objects[0].shape for i, y in zip(index, labels))


def test_classifier_learns_resumes_and_exports(root, separable, classifier_losses):
    assert np.mean(classifier_losses[-10:]) < 0.6 * np.mean(classifier_losses[:10])
    more = classifier.train(43, separable, batch_size=32, run=root / "clf-run", out=root / "clf", warmup=5,
                            vae_folder=root / "vae")
    assert len(more) == 3  # resumed from step 40
    model = NoiseAwareClassifier.from_pretrained(root / "clf", use_safetensors=True)
    assert model.class_names == list(SHAPES)
    data = latent_pool.load(separable)
    index, labels = classifier.shape_labels(data)
    accuracy = classifier.accuracy_by_noise(model, data.mean[index].float() * data.scaling, torch.from_numpy(labels))
    assert list(accuracy) == list(classifier.NOISE_LEVELS)
    assert accuracy[0] >= 0.9 and accuracy[0] >= accuracy[999]  # labels line up with the latents


def test_a_classifier_stage_starts_from_its_init_runs_averaged_weights(root, separable, classifier_losses):
    from safetensors.torch import load_file

    classifier.train(1, separable, batch_size=32, lr=0.0, run=root / "clf-stage", out=root / "clf-stage-out",
                     warmup=0, vae_folder=root / "vae", init=root / "clf-run")
    init = load_file(str(root / "clf-run" / "checkpoint.safetensors"))
    stage = load_file(str(root / "clf-stage" / "checkpoint.safetensors"))
    weights = [k for k in stage if k.startswith("classifier.") and stage[k].dtype.is_floating_point]
    assert weights and all(torch.equal(stage[k], init[f"ema.{k}"]) for k in weights)  # lr 0: the init's EMA


def test_a_wider_classifier_exports_its_widths_and_loads(root, separable):
    classifier.train(2, separable, batch_size=8, run=root / "clf-wide", out=root / "clf-wide-out", warmup=1,
                     vae_folder=root / "vae", channels=(16, 48))
    model = NoiseAwareClassifier.from_pretrained(root / "clf-wide-out", use_safetensors=True)
    assert tuple(model.config.block_out_channels) == (16, 48)
    assert model.head.in_features == 48 and model(torch.zeros(2, 4, 16, 16), 500).shape == (2, len(SHAPES))


def test_held_out_latents_are_fresh_encoded_single_objects(root):
    latents, labels = classifier.held_out_latents(root / "vae", 5)
    assert latents.shape == (5, 4, 16, 16) and labels.shape == (5,)
    assert torch.equal(labels, classifier.held_out_latents(root / "vae", 5)[1])  # seeded


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


def test_dit_loss_falls_resumes_and_exports_a_dit_pipeline(root, dit_losses):
    assert np.mean(dit_losses[-10:]) < 0.8 * np.mean(dit_losses[:10])
    more = dit.train(43, root / "pool", root / "vae", batch_size=8, run=root / "dit-run", out=root / "dit", warmup=5)
    assert len(more) == 3  # resumed from step 40
    pipe = DiTPipeline.from_pretrained(root / "dit")
    assert pipe.labels == {name: i for i, name in enumerate(SHAPES)}
    assert pipe.transformer.config.num_embeds_ada_norm == len(SHAPES)
    assert (root / "dit" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert dit.export_from_checkpoint(root / "vae", root / "dit-run", root / "dit-again") == 43
    again = DiTPipeline.from_pretrained(root / "dit-again").transformer.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in pipe.transformer.state_dict().items())
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        dit.export_from_checkpoint(root / "vae", root / "nothing-here", root / "dit-none")
    # DiTPipeline hard-codes the null id 1000, so it can only run this model without CFG; there the engine
    # must give the same pixels.
    expected = pipe(class_labels=[pipe.labels["star"]], num_inference_steps=3, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    result = Engine().generate(Request(model=str(root / "dit"), class_label="star", steps=3, seed=5,
                                       guidance=GuidanceSettings("cfg", 1.0)))
    got = np.asarray(result.images[0]).astype(np.int64)
    assert np.abs(got - np.round(expected * 255).astype(np.int64)).max() <= 1


def test_a_dit_stage_starts_from_its_init_runs_averaged_weights(root, dit_losses):
    from safetensors.torch import load_file

    losses = dit.train(1, root / "pool", root / "vae", batch_size=8, lr=0.0, run=root / "dit-stage",
                       out=root / "dit-stage-out", warmup=0, init=root / "dit-run")
    assert len(losses) == 1
    init = load_file(str(root / "dit-run" / "checkpoint.safetensors"))
    stage = load_file(str(root / "dit-stage" / "checkpoint.safetensors"))
    weights = [k for k in stage if k.startswith("transformer.") and stage[k].dtype.is_floating_point]
    assert weights and all(torch.equal(stage[k], init[f"ema.{k}"]) for k in weights)  # lr 0: the init's EMA
    with pytest.raises(ValueError, match="does not fit this transformer"):
        dit.train(1, root / "pool", root / "vae", batch_size=8, run=root / "dit-bad", out=root / "dit-bad-out",
                  init=root / "dit-run", num_layers=1)


def test_a_deeper_dit_stage_starts_as_exactly_its_init(root, dit_losses):
    from diffusers import DiTTransformer2DModel

    from training.text2img import start_from

    dit.train(1, root / "pool", root / "vae", batch_size=8, lr=0.0, run=root / "dit-deeper",
              out=root / "dit-deeper-out", warmup=0, init=root / "dit-run", num_layers=dit.DIT["num_layers"] + 2)
    deeper = DiTTransformer2DModel.from_pretrained(root / "dit-deeper-out" / "transformer").eval()
    init = dit.build_transformer(torch.device("cpu"))
    assert start_from(root / "dit-run", {"transformer": init}) == []
    assert len(deeper.transformer_blocks) == len(init.transformer_blocks) + 2
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([5, 500, 990]), torch.tensor([0, 3, dit.NULL_ID])
    with torch.no_grad():
        got, expected = (m.eval()(x, timestep=t, class_labels=y).sample for m in (deeper, init))
    assert torch.allclose(got, expected, atol=1e-6)  # the appended blocks are the identity until trained
    assert deeper.transformer_blocks[-1].norm1.linear.weight.abs().max() == 0


def test_engine_runs_cfg_and_classifier_guidance_with_the_exports(root, dit_losses, classifier_losses):
    result = Engine().generate(Request(model=str(root / "dit"), class_label="circle", classifier=str(root / "clf"),
                                       steps=3, num_images=2,
                                       guidance=GuidanceSettings("cfg", 4.0, classifier_scale=10.0)))
    assert [im.size for im in result.images] == [(64, 64)] * 2
    assert len(result.class_probs) == 3 and all(0 <= p <= 1 for p in result.class_probs[-1])


@pytest.fixture(scope="module")
def text_model(root):
    """The tiny Stable Diffusion over the recipes' VAE, so it draws 64x64 images in the classifier's latent space."""
    components = tiny_sd().components | {"vae": AutoencoderKL.from_pretrained(root / "vae")}
    StableDiffusionPipeline(**components).save_pretrained(root / "sd")
    return root / "sd"


def test_eval_class_never_makes_fewer_images_than_asked():
    per_round = eval_class.PER_BATCH * len(SHAPES)
    for n in (1, per_round - 1, per_round, per_round + 1, 200):
        images = eval_class.batch_count(n) * eval_class.PER_BATCH
        assert n <= images < n + per_round and images % per_round == 0
    assert eval_class.batch_count(200) * eval_class.PER_BATCH == 240


def test_eval_class_report_runs_end_to_end(root, dit_losses, classifier_losses, text_model, monkeypatch):
    monkeypatch.setattr(eval_class, "PER_BATCH", 2)
    monkeypatch.setattr(eval_class, "CFG_SCALES", (1.0, 4.0))
    monkeypatch.setattr(eval_class, "CLASSIFIER_SCALES", (0.0, 10.0))
    monkeypatch.setattr(eval_class, "CFG_UNDER_CLASSIFIER", (4.0,))
    results = eval_class.report(12, 2, dit=str(root / "dit"), classifier=str(root / "clf"),
                                sd=str(text_model), eval_n=12)
    kinds = [(r["kind"], r["cfg"], r["classifier_scale"]) for r in results["rows"]]
    assert kinds == [("dit", 1.0, 0.0), ("dit", 4.0, 0.0), ("dit", 0.0, 0.0), ("dit", 0.0, 10.0),
                     ("dit", 4.0, 10.0), ("sd", 7.5, 0.0), ("sd", 7.5, 10.0)]
    assert all(r["n"] == 12 and 0 <= r["accuracy"] <= 1 for r in results["rows"])
    assert results["rows"][0]["p_classifier"] is None and results["rows"][3]["p_classifier"] is not None
    assert list(results["classifier_accuracy_by_t"]) == list(classifier.NOISE_LEVELS)
