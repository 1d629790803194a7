"""Freed memory stays in the process: a CPU model's activations reuse the heap instead of faulting in fresh pages."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cpu.allocator import keep_freed_memory

LAB_UNET = Path(__file__).resolve().parents[3] / "assets" / "models" / "lab-sd" / "unet"
LOOP = textwrap.dedent("""
    import resource, sys, torch
    from diffusers import UNet2DConditionModel
    from engine.cpu.allocator import keep_freed_memory
    if sys.argv[1] == "kept":
        assert keep_freed_memory()
    torch.set_num_threads(1)
    unet = UNet2DConditionModel.from_pretrained(sys.argv[2]).eval()
    x, t, embeds = torch.randn(16, 4, 16, 16), torch.tensor(500), torch.randn(16, 8, 64)
    with torch.no_grad():
        for _ in range(2):  # warm-up: the heap grows to the forward's peak once
            unet(x, t, encoder_hidden_states=embeds)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            unet(x, t, encoder_hidden_states=embeds)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds are Linux's")
def test_freed_blocks_are_reused_without_page_faults():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", LOOP, mode, str(LAB_UNET)], capture_output=True, text=True,
                             check=True, timeout=300)
        return int(out.stdout.split()[-1])

    default, kept = faults("default"), faults("kept")  # minor page faults per lab-sd forward at batch 16
    assert default > 1000  # glibc's defaults give the activations' pages back and fault them in again
    assert kept < default / 20


def test_setting_the_thresholds_is_idempotent():
    first = keep_freed_memory()
    assert keep_freed_memory() is first
