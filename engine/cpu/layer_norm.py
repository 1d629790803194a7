"""A CPU model's layer norms through the row loop (engine/cpu/norm.c, the operator in engine/cpu/ops.cpp), in
every forward: the frozen graphs' (engine/cpu/graph.py) and diffusers' own, which the calls a graph cannot take
still run (attention maps, ControlNet residuals). Both then round alike, so turning on attention maps leaves an
image's bytes as they are.

The operator takes torch's kernel for what the loop has no case for (autograd, other dtypes, norms without weight
and bias, over more than the last dimension); under a torch dispatch mode (FLOP counting) the module keeps its own
forward.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .kernels import CpuKernels


class LayerNormForward:
    """Installed as a LayerNorm module's `forward`."""

    def __init__(self, module: torch.nn.LayerNorm, kernels: CpuKernels):
        self.module = module
        self.kernels = kernels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if _get_current_dispatch_mode() is not None or x.device.type != "cpu":
            return type(m).forward(m, x)
        return self.kernels.layer_norm(x, list(m.normalized_shape), m.weight, m.bias, m.eps)


def use_layer_norm_loop(model: torch.nn.Module, kernels: CpuKernels) -> int:
    """Give every LayerNorm of a CPU model the loop's forward where the loops built; returns how many got it."""
    if not kernels.available:
        return 0
    modules = [m for m in model.modules() if type(m) is torch.nn.LayerNorm]
    for module in modules:
        module.forward = LayerNormForward(module, kernels)
    return len(modules)
