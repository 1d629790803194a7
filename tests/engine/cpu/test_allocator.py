"""Memory given back: freed memory that glibc keeps goes back to the system when the engine asks, and the idle model
thread asks."""

import subprocess
import sys
import threading
import time

from engine.cpu.runner import ModelThread

PROBE = """
import sys
from engine.cpu.allocator import give_back_memory

def rss_mb():
    with open("/proc/self/status") as status:
        return int(next(l for l in status if l.startswith("VmRSS:")).split()[1]) / 1024

blocks = [bytearray(256 * 1024) for _ in range(1200)]  # 300 MB from the heap, once glibc's mmap threshold has grown
keep = blocks[-1]
del blocks  # the last block pins the heap's top: glibc keeps the rest unless asked
before = rss_mb()
assert give_back_memory()
print(before, rss_mb())
"""


def test_freed_heap_memory_goes_back_when_asked():
    if not sys.platform.startswith("linux"):
        return
    before, after = map(float, subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True,
                                              text=True).stdout.split())
    assert before - after > 150  # MB


def test_the_idle_model_thread_asks_once_per_quiet_spell(monkeypatch):
    from engine.cpu import runner

    monkeypatch.setattr(runner, "IDLE_S", 0.05)
    idle = threading.Event()
    calls = []
    thread = ModelThread(on_idle=lambda: calls.append(1) or idle.set())
    thread.call(lambda: None)
    assert idle.wait(5)
    time.sleep(0.3)
    assert len(calls) == 1  # once, not every IDLE_S while nothing happens
    idle.clear()
    thread.call(lambda: None)
    assert idle.wait(5) and len(calls) == 2
    thread.close(wait=True)
