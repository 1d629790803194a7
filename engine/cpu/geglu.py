"""The feed-forward GEGLU of a CPU model in one pass: the projection without its bias, then the C loop that adds the
bias, takes the GELU of the gate and multiplies (engine/cpu/kernels.c).

diffusers' GEGLU runs `proj` (torch fills the output with the bias, then adds the product into it), then the GELU
of one half, then the product with the other: three passes over a (B, L, 8C) tensor that is far bigger than the
block's input. At the lab's 16x16 level with a 30-image batch, one core: 2.53 ms diffusers, 1.39 ms fused; the
results differ from torch's by the last bits of float32 (torch's own erf formula, a different exp).

Only plain calls take the loop: float32 on the CPU, no autograd, not while ops are counted (plain.py), a plain `nn.Linear` projection without hooks, and a width the loop has a case for.
Everything else runs diffusers' forward.
"""

from __future__ import annotations

import torch
from diffusers.models.activations import GEGLU
from diffusers.models.attention import FeedForward

from .kernels import CpuKernels
from .plain import is_plain

# Rows of the feed-forward at a time: a 512 x 8C projection and its gate (at C = 32, 512 KB and 256 KB) stay in a
# core's cache between the three steps.
ROWS = 512


class FusedGEGLUForward:
    """Installed as a GEGLU module's `forward`."""

    def __init__(self, module: GEGLU, kernels: CpuKernels):
        self.module = module
        self.kernels = kernels

    def __call__(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not self._fits(hidden_states):
            return type(self.module).forward(self.module, hidden_states, *args, **kwargs)
        proj = self.module.proj
        h = torch.nn.functional.linear(hidden_states, proj.weight)  # (..., 2F), the bias left to the loop
        return self.kernels.geglu(h, proj.bias)

    def _fits(self, x: torch.Tensor) -> bool:
        proj = self.module.proj
        plain = (type(proj) is torch.nn.Linear and proj.bias is not None and not proj._forward_hooks
                 and not proj._forward_pre_hooks and proj.weight.dtype == torch.float32)
        tensor = (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
                  and not is_plain())
        return plain and tensor and proj.out_features % 32 == 0 and self.kernels.has_geglu


class FusedFeedForward:
    """Installed as a GEGLU feed-forward's `forward`: projection, GEGLU loop and output projection in one operator
    that takes ROWS rows at a time (engine/cpu/ops.cpp), where its GEGLU takes the loop and its other layers are a
    plain output Linear and inactive dropouts; diffusers' forward otherwise."""

    def __init__(self, module: FeedForward, kernels: CpuKernels):
        self.module = module
        self.kernels = kernels

    def __call__(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        net = self.module.net
        if args or kwargs or not self._fits(hidden_states):
            return type(self.module).forward(self.module, hidden_states, *args, **kwargs)
        act, out = net[0], net[2]
        return self.kernels.feed_forward(hidden_states, act.proj.weight, act.proj.bias, out.weight, out.bias, ROWS)

    def _fits(self, x: torch.Tensor) -> bool:
        net = self.module.net
        if len(net) < 3 or not isinstance(net[0].forward, FusedGEGLUForward) or not net[0].forward._fits(x):
            return False
        out = net[2]
        dropouts = [net[1], *net[3:]]
        quiet = all(type(d) is torch.nn.Dropout and (d.p == 0 or not d.training) for d in dropouts)
        plain = (type(out) is torch.nn.Linear and out.bias is not None and not out._forward_hooks
                 and not out._forward_pre_hooks and out.weight.dtype == torch.float32)
        return quiet and plain and not net[0]._forward_hooks and not net[0]._forward_pre_hooks


def use_fused_geglu(model: torch.nn.Module, kernels: CpuKernels) -> int:
    """Give every GEGLU of a CPU model the fused forward where the loop exists, and every GEGLU feed-forward the
    blocked one; returns how many GEGLUs got it."""
    if not kernels.has_geglu:
        return 0
    modules = [m for m in model.modules() if isinstance(m, GEGLU)]
    for module in modules:
        module.forward = FusedGEGLUForward(module, kernels)
    for block in model.modules():
        if type(block) is FeedForward:
            block.forward = FusedFeedForward(block, kernels)
    return len(modules)
