"""Keep freed memory in the process on Linux, so that a CPU model's activations do not page-fault on every call.

glibc's malloc serves allocations above its mmap threshold (128 KiB, rising as blocks are freed) with fresh pages
from the kernel and gives them back when they are freed. A UNet forward on the CPU allocates hundreds of
activations of 0.1 to 16 MB and frees them again, so every call faults its working set in page by page: 4,500
minor faults per lab-sd forward at batch 16, about 15% of its time (`python -m engine bench --grid` before and
after). PyTorch's CPU tuning guide cures this with jemalloc or tcmalloc preloaded; the same cure without another
library is two mallopt calls: a fixed mmap threshold at glibc's largest (32 MiB), so such blocks come from the
heap, and a trim threshold high enough that freed heap memory stays for the next call. The blocks above 32 MiB
(big GPU-less images, high-resolution VAE decodes) still come from mmap and go back; the heap's free memory goes
back when the engine has been idle a moment (`give_back_memory`, called by the model thread).
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
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:  # not Linux, or musl and other C libraries without mallopt: keep their defaults
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.warning("glibc refused the malloc thresholds; CPU models keep page-faulting their activations.")
    return done


def give_back_memory() -> bool:
    """Return the free memory of every malloc arena to the system (glibc's malloc_trim); True where it did. The
    thresholds above keep a request's freed activations for its next call; after a request, once the engine is
    idle, they go back, so a server's memory falls back to what its models need."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    libc.malloc_trim(0)
    return True


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
