"""Keep freed memory in the process on Linux, so that a CPU model's activations do not page-fault on every call.

glibc's malloc serves allocations above its mmap threshold (128 KiB, rising as blocks are freed) with fresh pages
from the kernel and gives them back when they are freed. A UNet forward on the CPU allocates hundreds of
activations of 0.1 to 16 MB and frees them again, so every call faults its working set in page by page: 4,500
minor faults per lab-sd forward at batch 16, about 15% of its time (`python -m engine bench --grid` before and
after). PyTorch's CPU tuning guide cures this with jemalloc or tcmalloc preloaded; the same cure without another
library is two mallopt calls: a fixed mmap threshold at glibc's largest (32 MiB), so such blocks come from the
heap, and a trim threshold high enough that freed heap memory stays for the next call. The cost is that the
process keeps its peak heap; the blocks above 32 MiB (big GPU-less images, high-resolution VAE decodes) still
come from mmap and go back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: HEAP_MAX_SIZE / 2 on 64-bit
TRIM_THRESHOLD = 2**30  # freed heap memory up to this stays with the process

log = logging.getLogger(__name__)
_lock = threading.Lock()
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True where they are set (Linux with glibc), False elsewhere."""
    global _done
    with _lock:
        if _done is None:
            _done = _set_thresholds()
        return _done


def _set_thresholds() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt: keep their defaults
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.warning("glibc refused the malloc thresholds; CPU models keep page-faulting their activations.")
    return done
