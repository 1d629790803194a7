"""The norm loops (engine/cpu/norm.c): torch's group_norm (and SiLU) and layer_norm to float32 rounding, in both
builds."""


import pytest
import torch

from engine.cpu.kernels import FLAGS, CpuKernels
from tests.engine.cpu.kernels import needs_compiler


@pytest.fixture(scope="module", params=["kernels", "portable"])
def kernels(request):
    return CpuKernels() if request.param == "kernels" else CpuKernels(FLAGS + ("-mno-avx512f",))


def _reference(x, weight, bias, groups, silu, dtype):
    out = torch.nn.functional.group_norm(x.to(dtype), groups, weight.to(dtype), bias.to(dtype), 1e-5)
    return torch.nn.functional.silu(out) if silu else out


@needs_compiler
@pytest.mark.parametrize("shape, groups", [((3, 64, 16, 16), 16), ((2, 96, 8, 8), 16), ((1, 40, 3, 5), 8),
                                           ((1, 96, 1, 1), 16)])
@pytest.mark.parametrize("silu", [False, True])
def test_the_loop_is_as_accurate_as_torch(kernels, shape, groups, silu):
    gen = torch.Generator().manual_seed(shape[1] + groups)
    x = (torch.randn(*shape, generator=gen) * 3 + 2).contiguous(memory_format=torch.channels_last)  # a mean that
    weight, bias = torch.randn(shape[1], generator=gen), torch.randn(shape[1], generator=gen)  # would cancel E[x^2]
    exact = _reference(x, weight, bias, groups, silu, torch.float64)
    ours = kernels.group_norm(x, weight, bias, groups, 1e-5, silu)
    theirs = _reference(x, weight, bias, groups, silu, torch.float32)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert (ours - exact).abs().max().item() < 2 * (theirs - exact).abs().max().item() + 1e-6


@needs_compiler
def test_any_layout_in_channels_last_out(kernels):
    x = torch.randn(2, 32, 4, 4)
    weight, bias = torch.ones(32), torch.zeros(32)
    out = kernels.group_norm(x, weight, bias, 16, 1e-5)
    torch.testing.assert_close(out, torch.nn.functional.group_norm(x, 16, weight, bias, 1e-5), atol=2e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="multiple of the groups"):
        kernels.group_norm(torch.randn(1, 30, 2, 2), torch.ones(30), torch.zeros(30), 16, 1e-5)


@needs_compiler
@pytest.mark.parametrize("shape", [(30, 256, 32), (3, 16, 64), (7, 5, 40), (2, 3, 96), (4, 1)])
def test_the_layer_norm_loop_is_as_accurate_as_torch(kernels, shape):
    gen = torch.Generator().manual_seed(shape[-1])
    x = torch.randn(*shape, generator=gen) * 3 + 2
    weight, bias = torch.randn(shape[-1], generator=gen), torch.randn(shape[-1], generator=gen)
    exact = torch.nn.functional.layer_norm(x.double(), shape[-1:], weight.double(), bias.double(), 1e-5)
    theirs = torch.nn.functional.layer_norm(x, shape[-1:], weight, bias, 1e-5)
    with torch.no_grad():
        ours = kernels.layer_norm(x, [shape[-1]], weight, bias, 1e-5)
    assert not torch.equal(ours, theirs) or shape == (4, 1)  # the loop ran, not torch's kernel
    assert (ours - exact).abs().max().item() < 2 * (theirs - exact).abs().max().item() + 1e-6


@needs_compiler
def test_other_layer_norms_and_layouts_give_torchs_result(kernels):
    x = torch.randn(2, 3, 8, 16)
    weight, bias = torch.randn(8, 16), torch.randn(8, 16)
    with torch.no_grad():
        for args in ((x, [8, 16], weight, bias), (x, [16], None, None), (x.double(), [16], None, None),
                     (x.transpose(1, 2), [3, 16][1:], weight[0], bias[0])):
            expected = torch.nn.functional.layer_norm(args[0], args[1], args[2], args[3], 1e-5)
            torch.testing.assert_close(kernels.layer_norm(*args, 1e-5), expected, atol=2e-6, rtol=1e-5)
    grad = x.requires_grad_()
    out = kernels.layer_norm(grad, [16], weight[0], bias[0], 1e-5)  # autograd: torch's, so it differentiates
    out.sum().backward()
    assert grad.grad is not None


@needs_compiler
def test_a_models_layer_norms_run_the_loop_outside_dispatch_modes():
    from torch.utils.flop_counter import FlopCounterMode

    from engine.cpu.layer_norm import use_layer_norm_loop

    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LayerNorm(32), torch.nn.LayerNorm(32, bias=False))
    x = torch.randn(5, 7, 32, generator=torch.Generator().manual_seed(0)) * 3 + 2
    with torch.no_grad():
        expected = model(x)
        assert use_layer_norm_loop(model, CpuKernels()) == 2
        looped = model(x)
        with FlopCounterMode(display=False):
            counted = model(x)
        norm = model[1]
        assert not torch.equal(norm(x), torch.nn.functional.layer_norm(x, (32,), norm.weight, norm.bias))  # the loop
    torch.testing.assert_close(looped, expected, atol=2e-6, rtol=1e-5)
    assert torch.equal(counted, expected)  # a dispatch mode sees torch's own ops
