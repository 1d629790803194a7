"""Softmax attention for small heads on the CPU, in a page of C: torch's SDPA kernel is four times slower there.

The lab's UNet attends with 8 heads of 4 channels over the 256 tokens of its 16x16 level (8 channels at 8x8). For
heads that small the CPU flash kernel spends its time in two tiny matrix products per block of queries rather
than in the softmax: 14.5 ms against 3.6 ms for one self-attention of a 15-image batch on one core, and attention
was half of the UNet's time (`python -m engine bench --grid` shows the Compare grid before and after).
engine/cpu_attention.c has two loops. Where the CPU has AVX-512 it takes sixteen queries of one head at once, one
per lane of a register, over keys and values as the projections give them, with the exponential as a power of two:
no sums across lanes and no transposes (a 30-image batch's self-attention at 16x16 on one Xeon core: 4.0 ms against
6.8 for the row loop; its cross-attention 0.44 against 1.53). Elsewhere it takes one query row at a time with keys
and values laid out token-last, so that each of its loops runs along the tokens in vector registers. It is built
with the system's C compiler for this machine the first time a model needs it (a fraction of a second).
Everything else - other head sizes, masks, autograd, GPUs, half precision, no compiler, torch dispatch modes such
as FLOP counting - keeps diffusers' SDPA processor.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch.utils._python_dispatch import _get_current_dispatch_mode

SOURCE = Path(__file__).with_suffix(".c")
HEAD_DIMS = (4, 8)  # the head sizes the C kernel has loops for
# The float licences the kernel's reductions need to vectorise (finite math: a NaN input need not come out NaN);
# not -ffast-math, which would also switch the CPU to flush-to-zero for the whole process when the library loads.
# Where the CPU has AVX-512, whole 16-float registers: a 15-image batch's cross-attention at 16x16 takes 1.10 ms
# instead of 1.48, and its self-attention 4.29 instead of 4.48 (the compiler otherwise keeps to 8 floats on AMD).
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fno-trapping-math",
         "-fassociative-math", "-fno-signed-zeros", "-ffinite-math-only", "-shared", "-fPIC")

log = logging.getLogger(__name__)

# The kernel as a torch operator, so that a traced graph (engine/cpu_graph.py) records a call to it rather than its
# output; the kernel is named by its key in _KERNELS, since an operator's arguments cannot be Python objects.
_OPS = torch.library.Library("guidance_lab", "DEF")
_OPS.define("small_head_attention(Tensor q, Tensor k, Tensor v, int heads, int kernel) -> Tensor")
# Weak: a store's kernel goes with its store; a graph's kernel lives as long as its UNet's processors hold it.
_KERNELS: weakref.WeakValueDictionary[int, "SmallHeadKernel"] = weakref.WeakValueDictionary()
_KEYS = itertools.count()


def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kernel: int) -> torch.Tensor:
    return _KERNELS[kernel](q, k, v, heads)


_OPS.impl("small_head_attention", _attention_op, "CPU")


class SmallHeadKernel:
    """The compiled kernel, built on first use; `available` is False where it cannot be built."""

    def __init__(self, flags: tuple[str, ...] = FLAGS):
        self.flags = flags  # the compiler's flags; a test builds the any-CPU loop alone with "-mno-avx512f"
        self._lock = threading.Lock()
        self._built: _Built | None = None
        self._failed = False
        self.key = next(_KEYS)
        _KERNELS[self.key] = self  # one per model store

    @property
    def available(self) -> bool:
        return self._load() is not None

    def __deepcopy__(self, memo) -> SmallHeadKernel:
        return self  # a copied model shares the built kernel (and the lock that guards the build)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """softmax(q k^T / sqrt(D)) v per head, for q (B, L, H*D) and k, v (B, S, H*D); returns (B, L, H*D)."""
        batch, queries, inner = q.shape
        tokens, dim = k.shape[1], inner // heads
        built = self._load()
        q = q.contiguous()
        out = torch.empty_like(q)  # (B, L, H*D)
        if built.lanes is not None:  # sixteen queries to a register, keys and values as they come
            k, v, function = k.contiguous(), v.contiguous(), built.lanes
            scratch = torch.empty(16 * tokens)  # (S, 16) scores
        else:
            k, v, function = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(), built.rows  # (B, H*D, S)
            scratch = torch.empty(tokens)  # (S,)
        status = function(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), batch, queries, tokens, heads,
                          dim, dim**-0.5, scratch.data_ptr())
        if status != 0:
            raise ValueError(f"The attention kernel has no loop for heads of {dim} channels.")
        return out

    def _load(self):
        with self._lock:
            if self._built is None and not self._failed:
                try:
                    self._built = _build(self.flags)
                except (OSError, subprocess.SubprocessError) as exc:  # no compiler, or one that refuses the flags
                    self._failed = True
                    log.warning("Attention stays torch's SDPA: the C kernel could not be built (%s).", exc)
            return self._built


@dataclass(frozen=True)
class _Built:
    """The library's loops: `rows` on every CPU, `lanes` where the compiler had AVX-512 (else None)."""

    rows: Callable
    lanes: Callable | None


def _build(flags: tuple[str, ...] = FLAGS) -> _Built:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise OSError("no C compiler found")
    with tempfile.TemporaryDirectory(prefix="guidance-lab-") as folder:  # the loaded library outlives its file
        library = Path(folder) / "cpu_attention.so"
        subprocess.run([compiler, *flags, str(SOURCE), "-o", str(library)], check=True, capture_output=True,
                       timeout=60)
        loaded = ctypes.CDLL(str(library))  # ctypes lets go of the GIL while a loop runs: splits overlap
    functions = [getattr(loaded, name, None) for name in ("attention", "attention_lanes")]
    for function in filter(None, functions):
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 5 + [ctypes.c_float, ctypes.c_void_p]
    return _Built(*functions)


class SmallHeadAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, with the C kernel where it applies: plain float32 CPU attention, no grad."""

    def __init__(self, kernel: SmallHeadKernel):
        super().__init__()
        self.kernel = kernel

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if not self._fits(attn, hidden_states, attention_mask):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states  # (B, S, C)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)  # (B, L|S, H*D)
        if torch.jit.is_tracing():  # the graph keeps the call, not this call's output
            out = torch.ops.guidance_lab.small_head_attention(query, key, value, attn.heads, self.kernel.key)
        else:
            out = self.kernel(query, key, value, attn.heads)  # (B, L, H*D)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        return out / attn.rescale_output_factor

    def graph_key(self) -> tuple:
        """What this processor computes, for engine/cpu_graph.py: the same for every processor on one kernel."""
        return "small-head", self.kernel.key

    def _fits(self, attn: Attention, hidden_states: torch.Tensor, attention_mask) -> bool:
        plain = (attention_mask is None and attn.spatial_norm is None and attn.group_norm is None
                 and attn.norm_cross is None and attn.norm_q is None and attn.norm_k is None
                 and not attn.residual_connection)
        tensor = (hidden_states.ndim == 3 and hidden_states.device.type == "cpu"
                  and hidden_states.dtype == torch.float32 and not torch.is_grad_enabled())
        # The kernel is invisible to torch's dispatcher, so under a dispatch mode (FLOP counting) SDPA stands in.
        tensor = tensor and _get_current_dispatch_mode() is None
        return plain and tensor and attn.inner_dim // attn.heads in HEAD_DIMS and self.kernel.available


def use_small_head_attention(model: torch.nn.Module, kernel: SmallHeadKernel) -> None:
    """Give every attention layer of a diffusers model (UNet, ControlNet) the small-head processor."""
    model.set_attn_processor(SmallHeadAttnProcessor(kernel))
