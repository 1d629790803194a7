"""Frozen graphs for a small UNet's plain CPU calls: diffusers' numbers, one graph per input signature, and every
other call - other arguments, other attention processors, FLOP counting, autograd - left to diffusers' forward."""

import copy
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.utils.flop_counter import FlopCounterMode

from engine.cpu import graph as cpu_graph
from engine.cpu.attention import use_small_head_attention
from engine.cpu.kernels import CpuKernels
from engine.cpu.graph import GraphForward, use_graphs
from engine.cpu.plain import plain_forward
from tests.engine.cpu.kernels import needs_compiler
from tests.tiny_models import tiny_sd

LAB_UNET = Path(__file__).resolve().parents[3] / "assets" / "models" / "lab-sd" / "unet"


def _unet():
    """The tiny UNet as the store serves it on the CPU: small-head processors (their heads do not fit the kernel
    here, so they attend through SDPA), then graphs."""
    unet = tiny_sd().unet.eval()
    use_small_head_attention(unet, CpuKernels())
    assert use_graphs(unet)
    return unet


def _inputs(batch: int, unet, seed: int = 0, tokens: int = 8):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, unet.config.sample_size, unet.config.sample_size, generator=gen)
    embeds = torch.randn(batch, tokens, unet.config.cross_attention_dim, generator=gen)
    return x, torch.tensor(500), embeds


def _eager(unet, x, t, embeds, **kwargs):
    return type(unet).forward(unet, x, t, embeds, return_dict=False, **kwargs)[0]


def test_graph_gives_diffusers_numbers_and_is_kept_per_signature():
    unet = _unet()
    x, t, embeds = _inputs(3, unet)
    with torch.no_grad():
        expected = _eager(unet, x, t, embeds)
        out = unet(x, t, encoder_hidden_states=embeds).sample
        again = unet(x, t, embeds, return_dict=False)[0]
        assert unet.forward.graphs == 1
        x5, t5, e5 = _inputs(5, unet, seed=1)
        other = unet(x5, t5, encoder_hidden_states=e5).sample
        assert unet.forward.graphs == 2  # another batch size, another graph
        torch.testing.assert_close(other, _eager(unet, x5, t5, e5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out, again)


@needs_compiler
def test_the_graph_calls_the_c_loops_rather_than_keeping_their_output():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(LAB_UNET).eval()  # heads of 4 and 8 channels: the kernel's
    kernels = CpuKernels()
    use_small_head_attention(unet, kernels)
    assert use_graphs(unet)
    x, t, embeds = _inputs(2, unet)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=embeds)
        graph = next(g for g in unet.forward._graphs.values())
        assert f"{kernels.namespace}::small_head_attention" in str(graph.inlined_graph)
        # a C++ kernel, which a graph calls without the GIL
        assert "ops.cpp" in torch._C._dispatch_dump(f"{kernels.namespace}::small_head_attention")
        x2, _, e2 = _inputs(2, unet, seed=7)  # same signature, new values: the graph must not replay old ones
        torch.testing.assert_close(unet(x2, t, encoder_hidden_states=e2).sample, _eager(unet, x2, t, e2),
                                   atol=1e-5, rtol=1e-5)


@needs_compiler
def test_with_the_norm_loop_the_graph_runs_channels_last():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(LAB_UNET).eval()
    kernels = CpuKernels()
    use_small_head_attention(unet, kernels)
    assert use_graphs(unet, kernels)
    x, t, embeds = _inputs(3, unet)
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=embeds).sample
        expected = _eager(unet, x, t, embeds)
    graph = str(next(g for g in unet.forward._graphs.values()).inlined_graph)
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())
    # every group norm is the loop, the SiLU after a resnet's norm and the last one's inside it (two SiLUs stay:
    # the time embedding's); no copy back to NCHW before a transformer's proj_out
    assert graph.count(f"{kernels.namespace}::group_norm") == norms and "aten::group_norm" not in graph
    assert graph.count("aten::silu") == 2 and graph.count("aten::contiguous") == 2  # the sample in, the prediction out
    assert out.is_contiguous() and out.shape == x.shape
    assert all(m.weight.is_contiguous() for m in unet.modules() if isinstance(m, torch.nn.Conv2d))  # the module's own
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def test_other_calls_run_diffusers_forward():
    unet = _unet()
    x, t, embeds = _inputs(2, unet)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=embeds, cross_attention_kwargs={"scale": 1.0})  # an extra argument
        unet(x, t.float()[None].expand(2), encoder_hidden_states=embeds)  # per-sample timesteps
        with plain_forward(), FlopCounterMode(display=False) as counter:
            unet(x, t, encoder_hidden_states=embeds)
        assert counter.get_total_flops() > 0  # FLOP counting sees diffusers' ops
        unet.set_attn_processor(AttnProcessor2_0())  # a processor that cannot say what it computes
        unet(x, t, encoder_hidden_states=embeds)
    unet.train()
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=embeds)
    unet.eval()
    unet(x, t, encoder_hidden_states=embeds)  # autograd on
    assert unet.forward.graphs == 0


def test_hooks_still_run_and_a_copy_traces_its_own_graphs():
    unet = _unet()
    seen = []
    handle = unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    x, t, embeds = _inputs(2, unet)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=embeds)
    handle.remove()
    assert seen == [2] and unet.forward.graphs == 1
    twin = copy.deepcopy(unet)
    assert isinstance(twin.forward, GraphForward) and twin.forward.unet is twin and twin.forward.graphs == 0
    with torch.no_grad():
        torch.nn.init.zeros_(twin.conv_out.bias)
        torch.nn.init.zeros_(twin.conv_out.weight)
        assert torch.equal(twin(x, t, encoder_hidden_states=embeds).sample, torch.zeros_like(x))
        assert not torch.equal(unet(x, t, encoder_hidden_states=embeds).sample, torch.zeros_like(x))


def test_graphs_are_bounded_and_big_models_keep_python(monkeypatch):
    unet = _unet()
    monkeypatch.setattr(cpu_graph, "MAX_GRAPHS", 2)
    monkeypatch.setattr(cpu_graph, "ONE_IMAGE", 0)
    with torch.no_grad():
        for batch in (1, 2, 3, 1):
            x, t, embeds = _inputs(batch, unet)
            torch.testing.assert_close(unet(x, t, encoder_hidden_states=embeds).sample, _eager(unet, x, t, embeds),
                                       atol=1e-5, rtol=1e-5)
    # the first two signatures keep their graphs; the third runs diffusers' forward rather than evict one (a trace
    # made again would stay in memory a second time)
    assert unet.forward.graphs == 2 and [key[0][0] for key in unet.forward._graphs] == [1, 2]
    monkeypatch.setattr(cpu_graph, "ONE_IMAGE", 3)
    with torch.no_grad():
        unet(*_inputs(3, unet)[:2], encoder_hidden_states=_inputs(3, unet)[2])
    assert unet.forward.graphs == 3  # one image's batches are always traced
    monkeypatch.setattr(cpu_graph, "MAX_PARAMETERS", 10)
    assert not use_graphs(tiny_sd().unet)


def test_a_graph_that_fails_sends_its_signature_back_to_python(monkeypatch):
    unet = _unet()
    x, t, embeds = _inputs(2, unet)

    def broken(*args):
        raise RuntimeError("this build cannot run the graph")

    monkeypatch.setattr(GraphForward, "_trace", lambda self, *args: broken)
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=embeds).sample
    torch.testing.assert_close(out, _eager(unet, x, t, embeds), atol=0, rtol=0)
    assert unet.forward.graphs == 0


@pytest.mark.parametrize("mode", ["identity", "blur"])
def test_perturbed_rows_run_as_graphs_keyed_by_their_marks_and_settings(mode):
    from engine.guiders.perturb import AttentionPerturbation, perturbed_attention

    unet = _unet()
    x, t, embeds = _inputs(3, unet)
    marks = torch.tensor([False, False, True])
    perturbation = AttentionPerturbation(mode, "mid", sigma=2.0)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=embeds).sample
        with perturbed_attention(unet, perturbation):
            expected = _eager(unet, x, t, embeds, cross_attention_kwargs={"perturb": marks})
            out = unet(x, t, encoder_hidden_states=embeds, cross_attention_kwargs={"perturb": marks}).sample
            other = unet(x, t, encoder_hidden_states=embeds, cross_attention_kwargs={"perturb": ~marks}).sample
            assert unet.forward.graphs == 3  # plain, and one per pattern of marked rows
            torch.testing.assert_close(other, _eager(unet, x, t, embeds, cross_attention_kwargs={"perturb": ~marks}),
                                       atol=1e-5, rtol=1e-5)
        with perturbed_attention(unet, perturbation):  # a later run with the same settings: the same graph
            again = unet(x, t, encoder_hidden_states=embeds, cross_attention_kwargs={"perturb": marks}).sample
        assert unet.forward.graphs == 3
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=embeds).sample, plain, atol=0, rtol=0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out, again) and not torch.allclose(out, plain)

