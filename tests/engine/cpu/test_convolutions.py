"""The graphs' convolutions: the Winograd loop for 3x3 ones (engine/cpu/winograd.c) gives torch's convolution to
float32 rounding and the same bits on any number of threads (the same loop, the same order); 1x1 ones are one matrix
product; the frozen graphs call them where they serve."""

from pathlib import Path

import pytest
import torch

from engine.cpu.attention import use_small_head_attention
from engine.cpu.graph import _convolutions_as_calls, use_graphs
from engine.cpu.kernels import FLAGS, CpuKernels, winograd_weights
from tests.engine.cpu.kernels import kernels_with, needs_compiler

LAB_UNET = Path(__file__).resolve().parents[3] / "assets" / "models" / "lab-sd" / "unet"


@pytest.fixture(scope="module")
def kernels():
    return kernels_with("has_winograd", "the Winograd loop needs AVX-512")


def _case(n, c, o, h, w, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, 3, 3, generator=gen) / (3 * c ** 0.5)
    return x, weight, torch.randn(o, generator=gen)


@needs_compiler
@pytest.mark.parametrize("shape", [(30, 32, 32, 16, 16), (3, 96, 64, 8, 8), (2, 64, 48, 9, 11), (1, 16, 128, 1, 1),
                                   (4, 128, 16, 4, 4), (1, 32, 32, 2, 9), (2, 48, 64, 13, 8)])
@pytest.mark.parametrize("biased", [True, False])
def test_the_loop_is_near_torchs_convolution_in_float64(kernels, shape, biased):
    x, weight, bias = _case(*shape, seed=sum(shape))
    bias = bias if biased else None
    exact = torch.nn.functional.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    theirs = torch.nn.functional.conv2d(x, weight, bias, padding=1)
    ours = kernels.winograd_conv(x, winograd_weights(weight), bias)
    assert ours.shape == exact.shape and ours.is_contiguous(memory_format=torch.channels_last)
    errors = [(y.double() - exact).abs() for y in (ours, theirs)]
    rms, worst = ([e.pow(2).mean().sqrt().item() for e in errors], [e.max().item() for e in errors])
    if min(shape[3:]) >= 8:  # F(4x4, 3x3): factors up to 8 in its transforms, a few times the direct error
        assert rms[0] < 8 * rms[1] and worst[0] < 16 * worst[1] + 1e-6
    else:  # F(2x2, 3x3): sums and differences, the direct error or below
        assert rms[0] < 2 * rms[1] + 1e-7 and worst[0] < 2 * worst[1] + 1e-6
    assert not torch.equal(ours, theirs)  # the loop ran, not torch's kernel


@needs_compiler
def test_threads_share_a_call_and_give_the_same_bits(kernels):
    threads = torch.get_num_threads()
    for size in (4, 16):  # 480 tiles of 2x2 (ten blocks to share), 480 of 4x4 (twenty)
        x, weight, bias = _case(30, 64, 64, size, 4 * size, seed=3)
        u = winograd_weights(weight)
        try:
            torch.set_num_threads(1)
            alone = kernels.winograd_conv(x, u, bias)
            torch.set_num_threads(2)
            shared = kernels.winograd_conv(x.contiguous(), u, bias)  # an NCHW input is read as channels-last
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(alone, shared)


@needs_compiler
def test_shapes_it_has_no_case_for_are_refused_in_a_sentence(kernels):
    x, weight, bias = _case(1, 24, 32, 4, 4, seed=0)
    with pytest.raises(ValueError, match="no case for 24 -> 32 channels"):
        kernels.winograd_conv(x, winograd_weights(weight), bias)
    with pytest.raises(RuntimeError, match=r"u2 \(16, C, O\), u4 \(36, C, O\)"):
        kernels.winograd_conv(torch.randn(1, 32, 4, 4), (torch.randn(9, 32, 32), torch.randn(36, 32, 32)), None)


@needs_compiler
def test_the_lab_unets_graph_runs_its_3x3_convolutions_through_the_loop(kernels):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(LAB_UNET).eval()
    use_small_head_attention(unet, kernels)
    assert use_graphs(unet, kernels)
    gen = torch.Generator().manual_seed(0)
    x, embeds = torch.randn(3, 4, 16, 16, generator=gen), torch.randn(3, 8, 64, generator=gen)
    t = torch.tensor(500)
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=embeds).sample
        expected = type(unet).forward(unet, x, t, embeds, return_dict=False)[0]
    graph = str(next(g for g in unet.forward._graphs.values()).inlined_graph)
    served = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
              and m.stride == (1, 1) and m.padding == (1, 1) and m.in_channels % 16 == 0 and m.out_channels % 16 == 0]
    assert len(served) == 24 and graph.count(f"{kernels.namespace}::winograd_conv") == len(served)
    pointwise = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in unet.modules())
    assert pointwise == 27 and graph.count(f"{kernels.namespace}::pointwise_conv") == pointwise
    # what stays torch's: conv_in and conv_out (4 channels) and the two downsamplers (stride 2)
    assert graph.count("aten::_convolution") == 4
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


@needs_compiler
@pytest.mark.parametrize("shape", [(30, 32, 32, 16, 16), (30, 64, 64, 4, 4), (2, 96, 32, 3, 5), (1, 4, 3, 1, 1)])
def test_a_1x1_convolution_is_one_matrix_product(shape):
    x, weight, bias = _case(*shape, seed=1)
    weight = weight[:, :, 1:2, 1:2].contiguous()
    ops = CpuKernels()
    for b in (bias, None):
        expected = torch.nn.functional.conv2d(x, weight, b)
        out = ops.pointwise_conv(x, weight[:, :, 0, 0].t().contiguous(), b)
        assert out.shape == expected.shape and out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


@needs_compiler
def test_without_the_winograd_loop_the_graph_keeps_torchs_3x3_convolutions():
    portable = CpuKernels(FLAGS + ("-mno-avx512f",))
    assert portable.available and not portable.has_winograd
    model = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.Conv2d(32, 16, 1)).eval()
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        expected = model(x)
        for kernels, left in ((portable, 1), (CpuKernels(), 0 if CpuKernels().has_winograd else 1)):
            frozen = torch.jit.freeze(torch.jit.trace(model, x).eval())
            assert _convolutions_as_calls(frozen.graph, kernels) == 2 - left
            assert str(frozen.graph).count("aten::_convolution") == left
            torch.testing.assert_close(frozen(x), expected, atol=1e-5, rtol=1e-5)
