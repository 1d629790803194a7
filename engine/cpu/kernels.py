"""The lab's C loops for the CPU (engine/cpu/kernels.c) as torch operators (engine/cpu/ops.cpp), built with the
system's C and C++ compilers for the machine they run on and kept in a cache folder, so that a machine builds them
once (about ten seconds: torch's headers are most of it); a model store starts the build when it is made.

Five jobs, each where torch's general kernels lose most of their time on the lab's small shapes (each kept because
removing it costs the app 10% or more: docs/performance.md):
- softmax attention for heads of 4 and 8 channels (engine/cpu/attention.py installs it in the attention layers);
- the feed-forward GEGLU's bias, GELU and gate in one pass over the projection's output, and the feed-forward as
  one operator that takes 512 rows at a time, where the CPU has AVX-512 (engine/cpu/geglu.py): torch's linear fills
  its output with the bias before the product and then runs the GELU and the product as two more passes;
- group norm, with the SiLU after it where a resnet has one, on channels-last activations (engine/cpu/norm.c),
  which torch normalises 4x slower than NCHW ones; the frozen graphs call it (engine/cpu/graph.py);
- 3x3 convolutions of stride 1 as Winograd's F(4x4, 3x3) and F(2x2, 3x3) where the CPU has AVX-512
  (engine/cpu/winograd.c): 4x and 2.25x fewer multiplications than oneDNN's direct convolution, 1.3-2.7x faster
  on the lab UNet's shapes at batch 30 on one core; the frozen graphs call it (engine/cpu/graph.py);
- 1x1 convolutions as one matrix product on the channels-last rows (engine/cpu/ops.cpp), where oneDNN spends a
  fixed cost per call that dominates a one-image forward; the frozen graphs call it.
The operators are C++, not Python: a frozen graph (engine/cpu/graph.py) then calls them without taking the GIL.
Written in Python, each of a forward's 300 calls took it, and of two graphs running side by side one ran 17-20%
slower than alone, waiting on the other's calls.
No compiler, or one that refuses the flags, leaves torch's kernels everywhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("kernels.c", "norm.c", "winograd.c"))
# Loops whose sums keep their written order: built without the licence to reorder sums that the others'
# reductions need.
IN_ORDER = ("winograd.c",)
HEADERS = (Path(__file__).with_name("exp2.h"),)  # what they include
OPERATORS = Path(__file__).with_name("ops.cpp")
TORCH = Path(torch.__file__).parent  # its include/ and lib/ folders, as torch.utils.cpp_extension finds them
HEAD_DIMS = (4, 8)  # the head sizes the attention loops serve
# The loops' flags: the float licences their reductions need to vectorise (finite math: a NaN input need not come
# out NaN); not -ffast-math, which would also switch the CPU to flush-to-zero for the whole process when the library
# loads. Where the CPU has AVX-512, whole 16-float registers: a 15-image batch's cross-attention at 16x16 takes
# 1.10 ms instead of 1.48 in the row loop, and its self-attention 4.29 instead of 4.48 (the compiler otherwise keeps
# to 8 floats on AMD).
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fno-trapping-math",
         "-fassociative-math", "-fno-signed-zeros", "-ffinite-math-only")
NAMESPACE = "guidance_lab"  # the operators' namespace for FLAGS; other flags get one of their own
_ROWS, _LANES, _GEGLU, _WINOGRAD = 1, 2, 4, 8  # the bits of the library's loops()
# Winograd's kernel transforms G for F(2x2, 3x3) and F(4x4, 3x3), points 0, +-1, +-2 (engine/cpu/winograd.c)
_WINOGRAD_G2 = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_WINOGRAD_G4 = ((1 / 4, 0.0, 0.0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
                (1 / 24, -1 / 12, 1 / 6), (0.0, 0.0, 1.0))

log = logging.getLogger(__name__)
_LOADED: dict[str, object] = {}  # namespace -> its operators, once this process has loaded their library
_LOADING = threading.Lock()


class CpuKernels:
    """The compiled loops as operators, built on first use (or by `prepare`); `available` is False where they
    cannot be built."""

    def __init__(self, flags: tuple[str, ...] = FLAGS):
        self.flags = flags  # the loops' compiler flags; a test builds the any-CPU loops alone with "-mno-avx512f"
        digest = hashlib.sha256("\0".join(flags).encode()).hexdigest()[:12]
        self.namespace = NAMESPACE if flags == FLAGS else f"{NAMESPACE}_{digest}"
        self._lock = threading.Lock()
        self._ops = None
        self._loops = 0
        self._failed = False

    @property
    def available(self) -> bool:
        """Whether the library built: the row attention loop and the group norm loop exist wherever it did."""
        return self._load() is not None

    @property
    def lanes(self) -> bool:
        """Whether attention runs sixteen queries to a register (the CPU has AVX-512)."""
        return self._load() is not None and bool(self._loops & _LANES)

    @property
    def has_geglu(self) -> bool:
        """Whether the feed-forward GEGLU runs as one loop (the CPU has AVX-512)."""
        return self._load() is not None and bool(self._loops & _GEGLU)

    @property
    def has_winograd(self) -> bool:
        """Whether 3x3 convolutions can run as Winograd's (the CPU has AVX-512)."""
        return self._load() is not None and bool(self._loops & _WINOGRAD)

    def prepare(self) -> None:
        """Build (or find in the cache) and load the library on a background thread, so that the first model
        that needs it finds it ready."""
        threading.Thread(target=self._load, name="cpu-kernels-build", daemon=True).start()

    def __deepcopy__(self, memo) -> CpuKernels:
        return self  # a copied model shares the built loops (and the lock that guards the build)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """softmax(q k^T / sqrt(D)) v per head, for q (B, L, H*D) and k, v (B, S, H*D); returns (B, L, H*D)."""
        return self._load().small_head_attention(q, k, v, heads)

    def group_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float,
                   silu: bool = False) -> torch.Tensor:
        """torch's group_norm of an (N, C, H, W) float32 tensor, then SiLU where `silu`; channels-last out."""
        return self._load().group_norm(x, weight, bias, groups, eps, silu)

    def geglu(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(a + bias[:F]) * gelu(g + bias[F:]) for h = [a | g] (..., 2F) float32, F a multiple of 16."""
        return self._load().geglu(h, bias)

    def feed_forward(self, x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
                     b_out: torch.Tensor, rows: int) -> torch.Tensor:
        """linear(geglu(linear(x, w_in) + b_in), w_out, b_out), `rows` rows at a time, F a multiple of 16."""
        return self._load().feed_forward(x, w_in, b_in, w_out, b_out, rows)

    def winograd_conv(self, x: torch.Tensor, u: tuple[torch.Tensor, torch.Tensor],
                      bias: torch.Tensor | None) -> torch.Tensor:
        """conv2d(x, weight, bias, padding=1) for u = winograd_weights(weight), C and O multiples of 16;
        channels-last out."""
        return self._load().winograd_conv(x, *u, bias)

    def pointwise_conv(self, x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """conv2d(x, weight, bias) for a 1x1 kernel, weight_t = weight[:, :, 0, 0].t(), as one matrix product;
        channels-last out."""
        return self._load().pointwise_conv(x, weight_t, bias)

    def _load(self):
        if self._ops is None and not self._failed and torch.jit.is_tracing():
            # a first use inside a trace: load on a thread of its own, whose calls the tracer does not record
            loader = threading.Thread(target=self._load, name="cpu-kernels-load")
            loader.start()
            loader.join()
        with self._lock:
            if self._ops is None and not self._failed:
                try:
                    self._ops = _operators(self.flags, self.namespace)
                    self._loops = int(self._ops.loops())
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # no compiler, refused flags
                    self._failed = True
                    log.warning("torch's kernels stand in for the C loops: they could not be built (%s).", exc)
            return self._ops


WINOGRAD_F4_SIDE = 8  # images this high and wide take F(4x4, 3x3), smaller ones F(2x2, 3x3) (engine/cpu/ops.cpp)


def winograd_serves(weight_shape, stride, padding, dilation, groups) -> bool:
    """Whether the Winograd loop computes a convolution: 3x3, stride 1, padding 1, no dilation or groups, input and
    output channels multiples of 16. weight_shape (O, C, kh, kw); the rest as torch's conv2d takes them."""
    return (tuple(weight_shape[2:]) == (3, 3) and list(stride) == [1, 1] and list(padding) == [1, 1]
            and list(dilation) == [1, 1] and groups == 1 and weight_shape[0] % 16 == 0 and weight_shape[1] % 16 == 0)


def winograd_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3x3 kernel (O, C, 3, 3) as the Winograd loop takes it, U = G g G^T for F(2x2, 3x3) and for F(4x4, 3x3):
    (16, C, O) and (36, C, O) float32, computed in float64 so that each U is g's transform rounded once."""
    return tuple(_transform(torch.tensor(g, dtype=torch.float64), weight) for g in (_WINOGRAD_G2, _WINOGRAD_G4))


def _transform(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    u = torch.einsum("ik,ockl,jl->ijco", g, weight.detach().to(torch.float64), g)  # (a, a, C, O)
    return u.reshape(g.shape[0] ** 2, weight.shape[1], weight.shape[0]).to(torch.float32).contiguous()


def cache_folder() -> Path:
    """Where built libraries are kept: $GUIDANCE_LAB_CACHE, else the user's cache folder."""
    root = os.environ.get("GUIDANCE_LAB_CACHE") or os.environ.get("XDG_CACHE_HOME")
    if not root:
        try:
            root = Path.home() / ".cache"
        except RuntimeError:  # no home folder to be found
            root = tempfile.gettempdir()
    return Path(root) / "guidance-lab" / "kernels"


def _operators(flags: tuple[str, ...], namespace: str):
    """The namespace's operators, from this process's earlier load, the cache, or a new build."""
    with _LOADING:
        if namespace not in _LOADED:
            library = _build(flags, namespace)
            torch.ops.load_library(str(library))
            _LOADED[namespace] = getattr(torch.ops, namespace)
        return _LOADED[namespace]


def cpu_identity() -> str:
    """What -march=native builds for: the CPU's vendor, model and instruction-set flags (from /proc/cpuinfo where
    there is one, else what the platform module says). Two machines that differ here get libraries of their own."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("vendor_id", "model name", "cpu family", "model", "flags", "Features", "CPU part") and key not in fields:
            fields[key] = " ".join(sorted(value.split())) if key in ("flags", "Features") else value.strip()
    if not fields:
        fields = {"machine": platform.machine(), "processor": platform.processor()}
    return "\n".join(f"{k}={v}" for k, v in sorted(fields.items()))


def _build(flags: tuple[str, ...], namespace: str) -> Path:
    """The library's path in the cache folder, built first where it is not there yet. Its name hashes everything
    that goes into it: the sources, the flags, the compilers, torch's version and the CPU it is built for
    (`cpu_identity`), so that a cache folder shared between machines never hands one CPU another's instructions."""
    cc, cxx = (shutil.which(os.environ.get(name, default)) for name, default in (("CC", "cc"), ("CXX", "c++")))
    if cc is None or cxx is None:
        raise OSError("no C and C++ compilers found")
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"
    cxx_flags = ["-O2", "-std=c++20", "-shared", "-fPIC", "-fvisibility=hidden", f"-DGL_NAMESPACE={namespace}", abi,
                 f"-I{TORCH / 'include'}", f"-L{TORCH / 'lib'}", f"-Wl,-rpath,{TORCH / 'lib'}"]
    recipe = [*(source.read_text() for source in (*SOURCES, *HEADERS)), OPERATORS.read_text(), cc, cxx, *flags,
              *IN_ORDER, *cxx_flags, torch.__version__, cpu_identity()]
    name = f"cpu_kernels-{hashlib.sha256(chr(0).join(recipe).encode()).hexdigest()[:16]}.so"
    folder = cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # no writable cache: build for this process alone
        folder = Path(tempfile.mkdtemp(prefix="guidance-lab-kernels-"))
    library = folder / name
    if library.exists():
        return library
    with tempfile.TemporaryDirectory(prefix="build-", dir=folder) as scratch:
        objects, built = [Path(scratch) / f"{source.stem}.o" for source in SOURCES], Path(scratch) / name
        for source, obj in zip(SOURCES, objects):
            own = [f for f in flags if f != "-fassociative-math"] if source.name in IN_ORDER else list(flags)
            subprocess.run([cc, *own, "-c", "-fPIC", "-fvisibility=hidden", str(source), "-o", str(obj)],
                           check=True, capture_output=True, timeout=60)
        subprocess.run([cxx, *cxx_flags, str(OPERATORS), *map(str, objects), "-o", str(built), "-ltorch_cpu",
                        "-lc10"], check=True, capture_output=True, timeout=300)
        os.replace(built, library)  # whole or not at all, for another process building the same
    return library
