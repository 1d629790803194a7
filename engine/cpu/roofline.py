"""How much of the machine a run uses: the UNet FLOPs it performed against a measured fp32 matmul peak.

The work is counted, not timed: torch's FlopCounterMode gives the FLOPs of one UNet sample (convolutions,
matmuls, attention), and a forward hook counts how many samples the run evaluated. The peak is a large square
torch.mm on the calling thread with torch's current thread count, the best of a few.

On a virtual machine the hypervisor may run other guests on the same cores: Linux counts the time it took as
`steal` in /proc/stat. A run it interrupts is slower for reasons the code has nothing to do with, and a peak it
interrupts reads low, which raises the fraction. So the bench measures the peak several times across its runs
and keeps the best, and `stolen_share` tells how much of the CPU time the runs lost to steal.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .kernels import WINOGRAD_F4_SIDE, winograd_serves
from .plain import plain_forward

PEAK_SIDE = 2048  # big enough that the matmul runs at its kernel's full speed, small enough to take ~0.1 s


@dataclass
class Roofline:
    """A run's seconds and work against the machine's peak."""

    seconds: float
    flops: float
    peak_flops_per_s: float

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds

    @property
    def fraction(self) -> float:
        return self.flops_per_s / self.peak_flops_per_s

    @property
    def floor_s(self) -> float:
        """The seconds the same work would take at the peak."""
        return self.flops / self.peak_flops_per_s


def matmul_peak(side: int = PEAK_SIDE, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` (side x side) @ (side x side) fp32 products, after one warm-up."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(side, side, generator=gen) for _ in range(2))
    out = torch.empty(side, side)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best


@contextmanager
def stolen_share():
    """Yields a list that holds, once the block ends, the share of the machine's CPU time the hypervisor took from
    it during the block (0.0 on bare metal or an idle host); empty where /proc/stat is not there to say."""
    before = _cpu_ticks()
    share: list[float] = []
    try:
        yield share
    finally:
        after = _cpu_ticks()
        if before is not None and after is not None:
            total = sum(after) - sum(before)
            share.append((after[-1] - before[-1]) / total if total > 0 else 0.0)


def _cpu_ticks() -> list[int] | None:
    """The machine's CPU ticks so far: user, nice, system, idle, iowait, irq, softirq, steal (last); None where
    the system does not report them."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return [int(f) for f in fields[1:9]]



def unet_flops_per_sample(unet, encoder_hidden_states: torch.Tensor) -> int:
    """FLOPs of one UNet evaluation of one latent at the UNet's own sample size, with this (1, L, D) prompt."""
    return _counted(unet, encoder_hidden_states)[0].get_total_flops()


def winograd_flops_per_sample(unet, encoder_hidden_states: torch.Tensor) -> tuple[int, int]:
    """Of one sample's FLOPs, those of the 3x3 convolutions that the engine's graphs run as Winograd's (stride 1,
    padding 1, channels multiples of 16: engine/cpu/graph.py), as counted (a direct convolution's), and the
    FLOPs of the matrix products the loop does for them instead (engine/cpu/winograd.c: F(4x4, 3x3), a quarter of
    the multiplications, where the image is at least 8x8; F(2x2, 3x3), 1/2.25, below). The transforms' additions
    are not in either."""
    counter, sizes = _counted(unet, encoder_hidden_states)
    counts = counter.get_flop_counts()
    counted = performed = 0
    for name, module in unet.named_modules():
        served = isinstance(module, torch.nn.Conv2d) and winograd_serves(
            module.weight.shape, module.stride, module.padding, module.dilation, module.groups)
        flops = sum(counts.get(f"{type(unet).__name__}.{name}", {}).values())
        if served and name in sizes:
            counted += flops
            performed += flops // 4 if min(sizes[name]) >= WINOGRAD_F4_SIDE else round(flops / 2.25)
    return counted, performed


def _counted(unet, encoder_hidden_states: torch.Tensor) -> tuple[FlopCounterMode, dict[str, tuple[int, int]]]:
    """A FLOP counter over one UNet evaluation of one latent at the UNet's own sample size, with this (1, L, D)
    prompt, and the output height and width of each of its convolutions."""
    side = unet.config.sample_size
    x = torch.zeros(1, unet.config.in_channels, side, side, dtype=unet.dtype, device=unet.device)
    embeds = encoder_hidden_states[:1].detach()  # (1, L, D); the counter's module hooks trip over a grad graph
    sizes: dict[str, tuple[int, int]] = {}

    def size_of(name: str):
        def hook(_module, _args, out) -> None:  # a hook that returned a value would replace the output
            sizes.setdefault(name, tuple(out.shape[-2:]))
        return hook

    hooks = [module.register_forward_hook(size_of(name))
             for name, module in unet.named_modules() if isinstance(module, torch.nn.Conv2d)]
    try:
        with torch.no_grad(), plain_forward(), FlopCounterMode(display=False) as counter:
            unet(x, torch.tensor(500), encoder_hidden_states=embeds, return_dict=False)
    finally:
        for hook in hooks:
            hook.remove()
    return counter, sizes


@contextmanager
def counting_samples(module: torch.nn.Module):
    """Yields a list that holds, once the block ends, the batch size of every call to module; calls from any
    thread (batch splits) count."""
    sizes: list[int] = []
    lock = threading.Lock()

    def count(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        with lock:
            sizes.append(sample.shape[0])

    handle = module.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


def fast_convolution_note(unet, encoder_hidden_states: torch.Tensor, fraction: float, per_sample: int) -> str | None:
    """Where the UNet's graphs run 3x3 convolutions through the Winograd loop, a line saying how many of the
    counted FLOPs that loop replaces by fewer products, and the roofline fraction by the CPU's own count; None
    elsewhere."""
    kernels = getattr(unet.forward, "kernels", None)  # the graph forward's loops (graph.py)
    if kernels is None or not kernels.has_winograd:
        return None
    counted, performed = winograd_flops_per_sample(unet, encoder_hidden_states)
    done = per_sample - counted + performed
    return (f"  (the model's FLOPs, as torch counts them; of them {counted / 1e6:.2f} MFLOP a sample are 3x3 "
            f"convolutions that the Winograd loop computes with {performed / 1e6:.2f} MFLOP of products: the CPU "
            f"did {done / 1e6:.2f} MFLOP a sample, a fraction of {fraction * done / per_sample:.3f} by that count)")
