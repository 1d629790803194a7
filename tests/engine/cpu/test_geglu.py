"""The fused GEGLU and the blocked feed-forward around it: torch's numbers to float32 rounding where the C loop
exists, diffusers' forward everywhere else."""

import copy

import pytest
import torch
from diffusers.models.activations import GEGLU
from diffusers.models.attention import FeedForward
from torch.utils.flop_counter import FlopCounterMode

from engine.cpu.geglu import ROWS, FusedFeedForward, FusedGEGLUForward, use_fused_geglu
from engine.cpu.kernels import FLAGS, CpuKernels
from engine.cpu.plain import plain_forward
from engine.models.loading import ModelStore
from engine.models.registry import resolve
from tests.engine.cpu.kernels import kernels_with, needs_compiler


@pytest.fixture(scope="module")
def kernels():
    return kernels_with("has_geglu", "this CPU has no AVX-512: the GEGLU loop is not built, diffusers' GEGLU runs")


def _geglu(dim: int, seed: int = 0) -> GEGLU:
    torch.manual_seed(seed)
    module = GEGLU(dim, 4 * dim).eval()
    torch.nn.init.normal_(module.proj.bias, std=0.5)  # a bias that matters
    return module


def _fused(module: GEGLU, kernels: CpuKernels) -> GEGLU:
    fused = copy.deepcopy(module)
    assert use_fused_geglu(fused, kernels) == 1
    return fused


@needs_compiler
@pytest.mark.parametrize("shape", [(3, 256, 32), (2, 64, 64), (5, 7, 16)])
def test_fused_geglu_is_as_accurate_as_torch(kernels, shape):
    module = _geglu(shape[-1])
    fused = _fused(module, kernels)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        exact = copy.deepcopy(module).double()(x.double())
        theirs = (module(x) - exact).abs().max().item()
        ours = (fused(x) - exact).abs().max().item()
    assert ours < 2 * theirs + 1e-6


@needs_compiler
def test_other_calls_run_diffusers_geglu(kernels, monkeypatch):
    module = _geglu(32)
    fused = _fused(module, kernels)
    calls = []
    monkeypatch.setattr(kernels, "geglu", lambda *args: calls.append(args) or CpuKernels.geglu(kernels, *args))
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(fused(x), module(x))  # autograd on
    with torch.no_grad(), plain_forward(), FlopCounterMode(display=False) as counter:
        fused(x)
    with FlopCounterMode(display=False) as theirs, torch.no_grad():
        module(x)
    assert counter.get_total_flops() == theirs.get_total_flops() > 0 and not calls  # counted as diffusers'
    handle = fused.proj.register_forward_hook(lambda *args: None)
    with torch.no_grad():
        assert torch.equal(fused(x), module(x))  # a hook on the projection must run
    handle.remove()
    with torch.no_grad():
        fused(x)
    assert len(calls) == 1  # the guards above count


@needs_compiler
def test_without_the_loop_geglu_is_left_alone():
    portable = CpuKernels(FLAGS + ("-mno-avx512f",))
    assert portable.available and not portable.has_geglu
    module = _geglu(32)
    assert use_fused_geglu(module, portable) == 0 and "forward" not in vars(module)


@needs_compiler
def test_the_store_gives_the_lab_unet_the_fused_geglu(kernels):
    store = ModelStore(torch.device("cpu"))
    unet = store.get(resolve("lab-sd", "text")).obj.unet
    modules = [m for m in unet.modules() if isinstance(m, GEGLU)]
    assert modules and all(isinstance(vars(m).get("forward"), FusedGEGLUForward) for m in modules)
    blocks = [m for m in unet.modules() if type(m) is FeedForward]
    assert blocks and all(isinstance(vars(m).get("forward"), FusedFeedForward) for m in blocks)


@needs_compiler
@pytest.mark.parametrize("shape", [(30, 256, 32), (3, 64, 64), (1, 1, 16)])
def test_the_blocked_feed_forward_gives_the_unblocked_numbers(kernels, shape):
    torch.manual_seed(3)
    block = FeedForward(shape[-1], activation_fn="geglu").eval()
    use_fused_geglu(block, kernels)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    calls = []
    with torch.no_grad():
        unblocked = type(block).forward(block, x)  # the fused GEGLU between torch's two linears
        weights = (block.net[0].proj.weight, block.net[0].proj.bias, block.net[2].weight, block.net[2].bias)
        # blocks of any size (products of other shapes, which BLAS may sum in another order): float32 rounding
        for rows in (ROWS, 10**6, 7):
            torch.testing.assert_close(kernels.feed_forward(x, *weights, rows), unblocked, atol=1e-6, rtol=1e-5)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(kernels, "feed_forward", lambda *a: calls.append(a) or CpuKernels.feed_forward(kernels, *a))
            torch.testing.assert_close(block(x), unblocked, atol=1e-6, rtol=1e-5)
            assert len(calls) == 1
            block.train()
            block.net[1].p = 0.1
            assert block(x).shape == unblocked.shape and len(calls) == 1  # an active dropout: diffusers' forward
