"""The group norm loop (engine/cpu/norm.c): torch's group_norm (and SiLU) to float32 rounding, in both builds."""


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
