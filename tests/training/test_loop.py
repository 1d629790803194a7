"""The one training loop on a toy regression: the schedule, the EMA it ships, clipping, checkpoints, and a resumed run
that ends exactly where an uninterrupted one does."""

import itertools

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import load_averaged
from training.loop import Loop, Schedule, cosine_lr, train

TARGET = torch.tensor([[2.0, -1.0, 0.5]])  # (1, 3)


def toy(run, steps=12, stop=None, warmup=2, **options):
    """A seeded linear model, its optimizer and the loop's other arguments: batches drawn from the step number
    alone, as the recipes draw theirs from step-derived seeds; the batch of step `stop` interrupts the run."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)

    def batches(start):
        for step in itertools.count(start):
            if step == stop:
                raise KeyboardInterrupt
            x = torch.randn(8, 3, generator=torch.Generator().manual_seed(step))  # (8, 3)
            yield x, x @ TARGET.T  # (8, 3), (8, 1)

    def loss(batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean()

    loop = Loop("toy", Schedule(steps, 8, 0.1, warmup), run, **{"save_every": 5, "log_every": 4, **options})
    return loop, {"model": model}, optimizer, batches, loss


def test_cosine_lr_warms_up_then_decays_to_five_percent():
    assert cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 1.0, 10) == pytest.approx(0.525)
    assert cosine_lr(100, 100, 1.0, 10) == pytest.approx(0.05) == cosine_lr(500, 100, 1.0, 10)


def test_the_loss_falls_and_the_modules_end_with_their_averaged_weights(tmp_path, capsys):
    loop, modules, optimizer, batches, loss = toy(tmp_path / "run", steps=60)
    saved = []
    losses = train(loop, modules, optimizer, batches, loss, on_save=lambda step, emas: saved.append(step))
    assert len(losses) == 60 and losses[-1] < 0.01 * losses[0]
    assert saved == list(range(5, 65, 5))
    shipped = modules["model"].weight.detach().clone()
    assert (shipped - TARGET).abs().max() < 0.1
    assert load_averaged(tmp_path / "run", modules) == 60 and torch.equal(modules["model"].weight, shipped)
    assert "[toy] step 60/60 loss" in capsys.readouterr().out


def checkpoint(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint.safetensors"))


def test_the_ema_decay_warms_up_unless_told_not_to(tmp_path):
    for warmup, first_decay in ((True, 1 / 10), (False, 0.9)):
        loop, modules, optimizer, batches, loss = toy(tmp_path / str(warmup), steps=1, ema_decay=0.9,
                                                      ema_warmup=warmup)
        before = modules["model"].weight.detach().clone()
        train(loop, modules, optimizer, batches, loss)
        live = checkpoint(loop.run)["model.weight"]
        assert not torch.allclose(live, before)
        assert torch.allclose(modules["model"].weight, first_decay * before + (1 - first_decay) * live)


def test_clipping_bounds_each_update(tmp_path):
    for clip in (1e-3, None):
        loop, modules, _, batches, loss = toy(tmp_path / str(clip), steps=1, clip=clip, warmup=0)
        optimizer = torch.optim.SGD(modules["model"].parameters(), lr=0.1)
        before = modules["model"].weight.detach().clone()
        train(loop, modules, optimizer, batches, loss)
        gradient_norm = (checkpoint(loop.run)["model.weight"] - before).norm().item() / 0.1
        assert (gradient_norm <= 1e-3 * 1.0001) == (clip is not None)


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    straight = train(*toy(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        train(*toy(tmp_path / "resumed", stop=7))
    resumed = train(*toy(tmp_path / "resumed"))  # picks up the checkpoint of step 5
    assert len(resumed) == 7 and resumed == straight[5:]
    expected, got = checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "resumed")
    assert sorted(got) == sorted(expected) == ["ema.model.weight", "model.weight", "opt.0.exp_avg",
                                               "opt.0.exp_avg_sq", "opt.0.step"]
    assert all(torch.equal(got[k], expected[k]) for k in expected)  # weights, average and AdamW moments
