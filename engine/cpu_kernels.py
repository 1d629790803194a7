"""The lab's C loops for the CPU (engine/cpu_kernels.c), built with the system's C compiler for the machine it runs on
the first time a model needs them (a fraction of a second), and called as torch operators.

Two jobs, each where torch's general kernels lose most of their time on the lab's small shapes:
- softmax attention for heads of 4 and 8 channels (engine/cpu_attention.py installs it in the attention layers);
- the feed-forward GEGLU's bias, GELU and gate in one pass over the projection's output, where the CPU has AVX-512
  (engine/cpu_geglu.py): torch's linear fills its output with the bias before the product and then runs the GELU
  and the product as two more passes, 2.53 ms for a 30-image batch at 16x16 on one core, 1.39 ms fused.
No compiler, or one that refuses the flags, leaves torch's kernels everywhere.
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

SOURCE = Path(__file__).with_suffix(".c")
HEAD_DIMS = (4, 8)  # the head sizes the attention loops serve
# The float licences the loops' reductions need to vectorise (finite math: a NaN input need not come out NaN);
# not -ffast-math, which would also switch the CPU to flush-to-zero for the whole process when the library loads.
# Where the CPU has AVX-512, whole 16-float registers: a 15-image batch's cross-attention at 16x16 takes 1.10 ms
# instead of 1.48 in the row loop, and its self-attention 4.29 instead of 4.48 (the compiler otherwise keeps to 8
# floats on AMD).
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fno-trapping-math",
         "-fassociative-math", "-fno-signed-zeros", "-ffinite-math-only", "-shared", "-fPIC")

log = logging.getLogger(__name__)

# The loops as torch operators, so that a traced graph (engine/cpu_graph.py) records a call to them rather than
# their output; the kernels are named by their key in _KERNELS, since an operator's arguments cannot be objects.
_OPS = torch.library.Library("guidance_lab", "DEF")
_OPS.define("small_head_attention(Tensor q, Tensor k, Tensor v, int heads, int kernel) -> Tensor")
_OPS.define("geglu(Tensor h, Tensor bias, int kernel) -> Tensor")
# Weak: a store's kernels go with its store; a graph's live as long as its UNet's processors and modules hold them.
_KERNELS: weakref.WeakValueDictionary[int, "CpuKernels"] = weakref.WeakValueDictionary()
_KEYS = itertools.count()
_OPS.impl("small_head_attention", lambda q, k, v, heads, kernel: _KERNELS[kernel].attention(q, k, v, heads), "CPU")
_OPS.impl("geglu", lambda h, bias, kernel: _KERNELS[kernel].geglu(h, bias), "CPU")


@dataclass(frozen=True)
class _Built:
    """The library's loops: `rows` on every CPU; `lanes` and `geglu` where the compiler had AVX-512 (else None)."""

    rows: Callable
    lanes: Callable | None
    geglu: Callable | None


class CpuKernels:
    """The compiled loops, built on first use; `available` is False where they cannot be built."""

    def __init__(self, flags: tuple[str, ...] = FLAGS):
        self.flags = flags  # the compiler's flags; a test builds the any-CPU loops alone with "-mno-avx512f"
        self._lock = threading.Lock()
        self._built: _Built | None = None
        self._failed = False
        self.key = next(_KEYS)
        _KERNELS[self.key] = self  # one per model store

    @property
    def available(self) -> bool:
        return self._load() is not None

    @property
    def has_geglu(self) -> bool:
        built = self._load()
        return built is not None and built.geglu is not None

    def __deepcopy__(self, memo) -> CpuKernels:
        return self  # a copied model shares the built loops (and the lock that guards the build)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
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

    def geglu(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(a + bias[:F]) * gelu(g + bias[F:]) for h = [a | g] (..., 2F) contiguous float32, F a multiple of 16."""
        features = h.shape[-1] // 2
        h, bias = h.contiguous(), bias.contiguous()
        out = h.new_empty((*h.shape[:-1], features))
        if self._load().geglu(h.data_ptr(), bias.data_ptr(), out.data_ptr(), h.numel() // h.shape[-1], features):
            raise ValueError(f"The GEGLU loop has no case for {features} features.")
        return out

    def _load(self) -> _Built | None:
        with self._lock:
            if self._built is None and not self._failed:
                try:
                    self._built = _build(self.flags)
                except (OSError, subprocess.SubprocessError) as exc:  # no compiler, or one that refuses the flags
                    self._failed = True
                    log.warning("Attention and GEGLU stay torch's: the C loops could not be built (%s).", exc)
            return self._built


def _build(flags: tuple[str, ...]) -> _Built:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise OSError("no C compiler found")
    with tempfile.TemporaryDirectory(prefix="guidance-lab-") as folder:  # the loaded library outlives its file
        library = Path(folder) / "cpu_kernels.so"
        subprocess.run([compiler, *flags, str(SOURCE), "-o", str(library)], check=True, capture_output=True,
                       timeout=60)
        loaded = ctypes.CDLL(str(library))  # ctypes lets go of the GIL while a loop runs: splits overlap
    attention = [getattr(loaded, name, None) for name in ("attention", "attention_lanes")]
    for function in filter(None, attention):
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 5 + [ctypes.c_float, ctypes.c_void_p]
    geglu = getattr(loaded, "geglu", None)
    if geglu is not None:
        geglu.restype = ctypes.c_int
        geglu.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 2
    return _Built(*attention, geglu)
