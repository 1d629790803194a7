"""The CPU speed work, behind one door: a model store on the CPU makes one `CpuPath` and hands it every model it
loads (`install`); the engine asks it to run independent requests side by side (`side_by_side`), to keep batches
whole for a while (`whole_batches`) and to give memory back after a request (`settle`). Nothing outside this
package names a kernel, a graph or the batch splitter, and on a GPU none of it runs.

What it installs on a loaded model, each where it applies (docs/performance.md has the ablation that keeps them):
- the batch splitter around the model's forward (parallel.py): a big batch is cut across the cores, one
  single-threaded worker a piece;
- the C loops, built once per CPU and torch version (kernels.py), as torch operators: small-head attention
  (attention.py), the fused GEGLU feed-forward (geglu.py), and in the frozen graphs of small UNets (graph.py) the
  channels-last group norm, the Winograd convolutions and the 1x1 convolutions as matrix products.

The thread policy lives here too (threads.py): model work runs on one thread of the engine's own (runner.py), with
a single OpenMP thread where its batch is small, so that no op waits at a barrier for a core another process took.

`LAB_CPU_LOOPS=off` switches the C loops off (torch's kernels everywhere), as on a machine without a compiler.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from .allocator import give_back_memory
from .parallel import BatchSplitter, SplitForward


PIECES = ("graphs", "channels_last", "winograd", "pointwise", "attention", "geglu", "split", "one_thread")  # what LAB_CPU_OFF may name, for ablations (docs/performance.md)


def pieces_off() -> frozenset:
    """The pieces LAB_CPU_OFF names (comma-separated), left out of the CPU path: for measuring what each earns."""
    named = {p.strip() for p in os.environ.get("LAB_CPU_OFF", "").split(",") if p.strip()}
    return frozenset(named & set(PIECES))


def loops_wanted() -> bool:
    """Whether the C loops may be built and used: not where LAB_CPU_LOOPS is off (0, off, false, no)."""
    return os.environ.get("LAB_CPU_LOOPS", "").strip().lower() not in ("0", "off", "false", "no")


class CpuPath:
    """The CPU speed work of one model store."""

    def __init__(self, loops: bool | None = None):
        """loops None: as LAB_CPU_LOOPS says (on unless switched off)."""
        from .kernels import CpuKernels

        self.off = pieces_off()
        self.kernels = CpuKernels() if (loops_wanted() if loops is None else loops) else None
        if self.kernels is not None:
            self.kernels.prepare()  # a machine's first build takes seconds: under way before the first model loads
        self.splitter = BatchSplitter(enabled="split" not in self.off)

    @property
    def loops(self) -> bool:
        """Whether the C loops are built and in use."""
        return self.kernels is not None and self.kernels.available

    def install(self, obj: Any) -> Any:
        """Give a loaded pipeline's denoiser (UNet or transformer), or a bare UNet, ControlNet or transformer, its
        CPU speed-ups; returns obj. Other models (classifiers, VAEs) are left as they are."""
        from diffusers import ControlNetModel, UNet2DConditionModel

        from .attention import use_small_head_attention
        from .geglu import use_fused_geglu
        from .graph import use_graphs

        models = [getattr(obj, name, None) for name in ("unet", "transformer")]
        models.append(obj if isinstance(obj, torch.nn.Module) and hasattr(obj, "config") else None)
        for model in models:
            if model is None or not isinstance(model, torch.nn.Module) or model.device.type != "cpu":
                continue
            if not hasattr(model.config, "in_channels") and not hasattr(model.config, "conditioning_channels"):
                continue  # a classifier or another model without a denoiser's forward
            if self.kernels is not None and isinstance(model, (UNet2DConditionModel, ControlNetModel)):
                if "attention" not in self.off:
                    use_small_head_attention(model, self.kernels)
                if "geglu" not in self.off:
                    use_fused_geglu(model, self.kernels)
            if isinstance(model, UNet2DConditionModel) and "graphs" not in self.off:
                use_graphs(model, None if "channels_last" in self.off else self.kernels, self.off)
            SplitForward.install(model, self.splitter, single="one_thread" not in self.off)
        return obj

    def side_by_side(self, jobs: list[Callable[[], Any]]) -> list[tuple[bool, Any]] | None:
        """Run independent jobs at once, one per core (BatchSplitter.side_by_side); None where that cannot help."""
        return self.splitter.side_by_side(jobs)

    @contextmanager
    def whole_batches(self) -> Iterator[None]:
        """Within the block, no batch is cut across the cores (attention maps record whole batches)."""
        enabled, self.splitter.enabled = self.splitter.enabled, False
        try:
            yield
        finally:
            self.splitter.enabled = enabled

    def settle(self) -> None:
        """Once the engine is idle: give the heap's free memory back to the system."""
        give_back_memory()
