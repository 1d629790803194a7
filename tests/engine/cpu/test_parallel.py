"""Batch-parallel calls: the same numbers as one call, through tuples and lists, in the caller's grad mode."""

import threading

import pytest
import torch

from engine.cpu.parallel import MIN_BATCH, BatchSplitter, SplitForward
from engine.cpu.threads import ThreadPolicy
from tests.tiny_models import tiny_controlnet, tiny_sd


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _spy(fn, seen):
    def wrapped(*args, **kwargs):
        seen.append((threading.current_thread().name, args[0].shape[0], torch.is_inference_mode_enabled()))
        return fn(*args, **kwargs)
    return wrapped


def test_unet_batch_is_split_across_threads_with_the_same_result(two_threads):
    unet = tiny_sd().unet.eval()
    batch = MIN_BATCH + 2
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 16, 16, generator=gen)
    embeds = torch.randn(batch, 8, unet.config.cross_attention_dim, generator=gen)
    t = torch.tensor(500)
    seen = []
    with torch.inference_mode():
        whole = unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
        split = BatchSplitter(cores=2)(_spy(unet, seen), batch, x, t, encoder_hidden_states=embeds, return_dict=False)[0]
    assert sorted(s[1] for s in seen) == [batch // 2, batch // 2]
    assert all(name.startswith("batch-split") and inference for name, _, inference in seen)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-4)
    assert torch.get_num_threads() == 2


def test_controlnet_residual_lists_are_split_and_joined(two_threads):
    unet = tiny_sd().unet.eval()
    controlnet = tiny_controlnet(unet).eval()
    batch = MIN_BATCH
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 16, 16, generator=gen)
    embeds = torch.randn(batch, 8, unet.config.cross_attention_dim, generator=gen)
    image = torch.rand(batch, 3, 32, 32, generator=gen)
    kwargs = dict(encoder_hidden_states=embeds, controlnet_cond=image, conditioning_scale=0.5, return_dict=False)
    with torch.no_grad():
        down, mid = controlnet(x, torch.tensor(300), **kwargs)
        down_split, mid_split = BatchSplitter(cores=2)(controlnet, batch, x, torch.tensor(300), **kwargs)
    assert isinstance(down_split, (list, tuple)) and len(down_split) == len(down)
    for a, b in zip(down_split, down):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mid_split, mid, atol=1e-5, rtol=1e-4)


def test_small_batches_and_single_threads_run_as_one_call(two_threads):
    seen = []
    fn = _spy(lambda x: x * 2, seen)
    BatchSplitter(cores=2)(fn, MIN_BATCH - 1, torch.ones(MIN_BATCH - 1, 2))
    BatchSplitter(cores=1)(fn, MIN_BATCH * 2, torch.ones(MIN_BATCH * 2, 2))
    assert [s[0] for s in seen] == [threading.current_thread().name] * 2


def test_disabled_switch_and_errors_reach_the_caller(two_threads):
    def fail(x):
        raise ValueError("bad batch")

    split = BatchSplitter(cores=2)
    with pytest.raises(ValueError, match="bad batch"):
        split(fail, MIN_BATCH, torch.ones(MIN_BATCH, 2))
    assert torch.get_num_threads() == 2
    split.enabled = False
    seen = []
    split(_spy(lambda x: x, seen), MIN_BATCH, torch.ones(MIN_BATCH, 2))
    assert seen[0][0] == threading.current_thread().name


def test_bounds_cover_the_batch_in_near_equal_pieces():
    split = BatchSplitter()
    assert split.bounds(30, 2) == [(0, 15), (15, 30)]
    assert split.bounds(17, 2) == [(0, 9), (9, 17)]
    assert split.bounds(MIN_BATCH, 4) == [(0, 8), (8, 16)]  # no piece below half the minimum batch


def test_each_store_installs_its_own_splitter_around_its_models(tiny_folders, monkeypatch):
    from engine.generate import Engine
    from engine.request import Request

    first, second = Engine(), Engine()
    assert first.store.cpu.splitter is not second.store.cpu.splitter
    calls = []
    run = first.store.cpu.splitter.run
    monkeypatch.setattr(first.store.cpu.splitter, "run", lambda fn, batch, *a, **k: calls.append(batch) or run(fn, batch, *a, **k))
    first.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=2, num_images=3))
    assert calls == [6, 6]  # each step's UNet batch: three images with their unconditional twins


def test_a_small_models_whole_batch_runs_on_one_openmp_thread(two_threads):
    seen = []

    def forward(x):
        seen.append(torch.get_num_threads())
        return x

    SplitForward(forward, BatchSplitter(cores=2), ThreadPolicy(True))(torch.ones(2, 3))
    SplitForward(forward, BatchSplitter(cores=2), ThreadPolicy(False))(torch.ones(2, 3))
    assert seen == [1, 2] and torch.get_num_threads() == 2
    assert ThreadPolicy.for_model(tiny_sd().unet).single  # the lab's models are small


def test_side_by_side_runs_jobs_at_once_each_on_one_core_in_order(two_threads):
    split = BatchSplitter(cores=2)
    meet = threading.Barrier(2, timeout=10)  # only two jobs running at the same time pass it
    seen = []

    def job(k):
        def run():
            meet.wait()
            inner = []
            split(_spy(lambda x: x, inner), MIN_BATCH * 2, torch.ones(MIN_BATCH * 2, 2))  # stays whole inside
            seen.append((torch.get_num_threads(), inner[0][0] == threading.current_thread().name))
            if k == 1:
                raise ValueError("second job failed")
            return k
        return run

    outcomes = split.side_by_side([job(0), job(1)])
    assert outcomes[0] == (True, 0)
    assert outcomes[1][0] is False and str(outcomes[1][1]) == "second job failed"
    assert seen == [(1, True), (1, True)]
    assert torch.get_num_threads() == 2


def test_side_by_side_declines_where_it_cannot_help(two_threads):
    split = BatchSplitter(cores=2)
    assert split.side_by_side([lambda: 1]) is None  # one job
    split.enabled = False
    assert split.side_by_side([lambda: 1, lambda: 2]) is None
    split.enabled = True
    assert BatchSplitter(cores=1).side_by_side([lambda: 1, lambda: 2]) is None  # one core
    assert split.side_by_side([lambda: split.side_by_side([lambda: 1, lambda: 2]), lambda: 3]) == [(True, None),
                                                                                                   (True, 3)]
