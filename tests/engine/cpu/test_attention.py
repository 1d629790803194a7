"""The small-head attention kernel: SDPA's numbers for the head sizes it serves, SDPA itself for everything else."""


import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch.utils.flop_counter import FlopCounterMode

from engine.cpu.attention import SmallHeadAttnProcessor
from engine.cpu.kernels import FLAGS, CpuKernels
from engine.cpu.plain import plain_forward
from engine.models.loading import ModelStore
from engine.models.registry import resolve
from tests.engine.cpu.kernels import needs_compiler


@pytest.fixture(scope="module")
def kernel():
    return CpuKernels()


@pytest.fixture(scope="module")
def portable():
    """The same source built without AVX-512: the any-CPU loop alone, as on a CPU without it."""
    return CpuKernels(FLAGS + ("-mno-avx512f",))


def _sdpa(q, k, v, heads):
    (b, length, inner), dim = q.shape, q.shape[-1] // heads
    split = lambda x: x.view(b, -1, heads, dim).transpose(1, 2)  # noqa: E731  (B, H, L, D)
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, length, inner)


@needs_compiler
@pytest.mark.parametrize("loop", ["kernel", "portable"])
@pytest.mark.parametrize("dim, queries, tokens", [(4, 256, 256), (4, 256, 7), (8, 64, 64), (8, 16, 33), (4, 37, 5)])
@pytest.mark.parametrize("size", [1.0, 3.0, 10.0])  # scores within the one-pass bound, both, beyond it
def test_kernel_is_as_accurate_as_sdpa(request, loop, dim, queries, tokens, size):
    kernel = request.getfixturevalue(loop)
    gen = torch.Generator().manual_seed(dim + tokens)
    heads = 8
    q = torch.randn(3, queries, heads * dim, generator=gen) * size  # 3: scores beyond +-1, as trained layers give
    k = torch.randn(3, tokens, heads * dim, generator=gen) * size
    v = torch.randn(3, tokens, heads * dim, generator=gen)
    exact = _sdpa(q.double(), k.double(), v.double(), heads)
    ours = (kernel.attention(q, k, v, heads) - exact).abs().max().item()
    theirs = (_sdpa(q, k, v, heads) - exact).abs().max().item()  # float32 SDPA's own rounding, about 3e-6
    assert ours < 2 * theirs + 1e-6


@needs_compiler
def test_huge_values_take_the_two_passes(kernel):
    """Scores near a float's range, and values whose weighted sum would overflow without the max taken out."""
    gen = torch.Generator().manual_seed(5)
    q, k = (torch.randn(2, 40, 32, generator=gen) * 6 for _ in range(2))
    v = torch.randn(2, 40, 32, generator=gen) * 1e30
    exact = _sdpa(q.double(), k.double(), v.double(), 8)
    ours = kernel.attention(q, k, v, 8)
    assert torch.isfinite(ours).all()
    error = lambda out: ((out - exact).abs().max() / 1e30).item()  # noqa: E731
    assert error(ours) < 2 * error(_sdpa(q, k, v, 8)) + 1e-6


@needs_compiler
def test_the_portable_build_has_only_the_row_loop(kernel, portable):
    assert portable.available and not portable.lanes and portable.namespace != kernel.namespace
    if "avx512f" in _cpu_flags():
        assert kernel.lanes  # this CPU runs sixteen queries to a register


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            return next((set(line.split(":", 1)[1].split()) for line in info if line.startswith("flags")), set())
    except OSError:
        return set()


def _attention(dim_head: int, cross: bool) -> Attention:
    torch.manual_seed(0)
    return Attention(32, cross_attention_dim=16 if cross else None, heads=32 // dim_head, dim_head=dim_head).eval()


@needs_compiler
@pytest.mark.parametrize("cross", [False, True])
def test_processor_matches_diffusers_sdpa_processor(kernel, cross):
    attn = _attention(4, cross)
    x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(1))
    context = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(2)) if cross else None
    with torch.no_grad():
        ours = SmallHeadAttnProcessor(kernel)(attn, x, context)
        theirs = AttnProcessor2_0()(attn, x, context)
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=1e-5)


class _CountingKernel(CpuKernels):
    calls = 0

    def attention(self, *args):
        self.calls += 1
        return super().attention(*args)


@needs_compiler
def test_everything_else_goes_to_sdpa_unchanged():
    kernel = _CountingKernel()
    processor = SmallHeadAttnProcessor(kernel)
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))
    attn = _attention(4, False)
    with torch.no_grad():
        wide = _attention(16, False)  # a head size without a loop
        assert torch.equal(processor(wide, x), AttnProcessor2_0()(wide, x))
        mask = torch.zeros(2, 1, 16)
        assert torch.equal(processor(attn, x, attention_mask=mask), AttnProcessor2_0()(attn, x, attention_mask=mask))
    assert torch.equal(processor(attn, x), AttnProcessor2_0()(attn, x))  # autograd on: SDPA's backward
    with torch.no_grad(), plain_forward(), FlopCounterMode(display=False) as counter:
        processor(attn, x)
    assert counter.get_total_flops() > 0 and kernel.calls == 0  # attention counted, as SDPA
    with torch.no_grad():
        processor(attn, x)
    assert kernel.calls == 1  # the guard above counts


@pytest.mark.parametrize("compiler", ["CC", "CXX"])
def test_without_a_compiler_attention_stays_sdpa(monkeypatch, compiler):
    monkeypatch.setenv(compiler, "no-such-compiler")
    kernel = CpuKernels(FLAGS + ("-DNO_SUCH_BUILD",))  # flags of its own: no library this process has loaded
    assert not kernel.available
    attn = _attention(4, False)
    x = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(SmallHeadAttnProcessor(kernel)(attn, x), AttnProcessor2_0()(attn, x))


def test_the_store_gives_unets_and_controlnets_the_processor_unless_the_loops_are_off(tiny_folders):
    store = ModelStore(torch.device("cpu"))
    unet = store.get(resolve(str(tiny_folders["sd"]), "text")).obj.unet
    controlnet = store.get(resolve(str(tiny_folders["controlnet"]), "controlnet")).obj
    expected = SmallHeadAttnProcessor if store.cpu.kernels is not None else AttnProcessor2_0  # LAB_CPU_LOOPS=off
    for model in (unet, controlnet):
        assert {type(p) for p in model.attn_processors.values()} == {expected}


def test_a_copied_model_shares_the_kernel(kernel):
    import copy

    attn = _attention(4, False)
    attn.set_processor(SmallHeadAttnProcessor(kernel))
    assert copy.deepcopy(attn).processor.kernel is kernel
