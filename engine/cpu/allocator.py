"""Memory given back: after a request, once the engine is idle, the C library's free memory returns to the system.

glibc's malloc keeps memory a process has freed: blocks freed below the top of a heap, and whole arenas of the
threads that ran a request (the batch splitter's and side-by-side workers), stay resident, so a server's memory
stays at its largest request's peak. `give_back_memory` asks glibc to return every arena's free pages
(malloc_trim); the model thread calls it after a quiet spell (engine/cpu/runner.py), never during a run, so no
request pays for pages faulted in again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def give_back_memory() -> bool:
    """Return the free memory of every malloc arena to the system (glibc's malloc_trim); True where it did
    (Linux with glibc), False elsewhere."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:  # not Linux, or musl and other C libraries without malloc_trim
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
