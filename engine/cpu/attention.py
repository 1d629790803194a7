"""Softmax attention for small heads on the CPU, in a page of C: torch's SDPA kernel is four times slower there.

The lab's UNet attends with 8 heads of 4 channels over the 256 tokens of its 16x16 level (8 channels at 8x8). For
heads that small the CPU flash kernel spends its time in two tiny matrix products per block of queries rather
than in the softmax: 14.5 ms against 3.6 ms for one self-attention of a 15-image batch on one core, and attention
was half of the UNet's time (`python -m engine bench --grid` shows the Compare grid before and after).
engine/cpu/kernels.c has two loops. Where the CPU has AVX-512 it takes sixteen queries of one head at once, one
per lane of a register, over keys and values as the projections give them, with the exponential as a power of two:
no sums across lanes and no transposes (a 30-image batch's self-attention at 16x16 on one Xeon core: 4.0 ms against
6.8 for the row loop; its cross-attention 0.44 against 1.53). Elsewhere it takes one query row at a time with keys
and values laid out token-last, so that each of its loops runs along the tokens in vector registers. Both are
torch operators in C++ (engine/cpu/kernels.py builds them once a machine and keeps them in a cache folder).
Everything else - other head sizes, masks, autograd, GPUs, half precision, no compiler, torch dispatch modes such
as FLOP counting (plain.py) - keeps diffusers' SDPA processor.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .kernels import HEAD_DIMS, CpuKernels
from .plain import is_plain


class SmallHeadAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, with the C kernel where it applies: plain float32 CPU attention, no grad."""

    def __init__(self, kernel: CpuKernels):
        super().__init__()
        self.kernel = kernel

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if not self._fits(attn, hidden_states, attention_mask):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states  # (B, S, C)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)  # (B, L|S, H*D)
        out = self.kernel.attention(query, key, value, attn.heads)  # (B, L, H*D); a traced graph keeps the call
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        # x / 1 is x: a graph need not run that pass over the output (20 of them a forward in the lab UNet)
        return out if attn.rescale_output_factor == 1 else out / attn.rescale_output_factor

    def computation_key(self) -> tuple:
        """What this processor computes, for engine/cpu/graph.py: the same for every processor on one kernel."""
        return "small-head", self.kernel.namespace

    def _fits(self, attn: Attention, hidden_states: torch.Tensor, attention_mask) -> bool:
        plain = (attention_mask is None and attn.spatial_norm is None and attn.group_norm is None
                 and attn.norm_cross is None and attn.norm_q is None and attn.norm_k is None
                 and not attn.residual_connection)
        tensor = (hidden_states.ndim == 3 and hidden_states.device.type == "cpu"
                  and hidden_states.dtype == torch.float32 and not torch.is_grad_enabled())
        # The kernel is invisible to torch's dispatcher, so where ops are being counted SDPA stands in.
        tensor = tensor and not is_plain()
        return plain and tensor and attn.inner_dim // attn.heads in HEAD_DIMS and self.kernel.available


def use_small_head_attention(model: torch.nn.Module, kernel: CpuKernels) -> None:
    """Give every attention layer of a diffusers model (UNet, ControlNet) the small-head processor."""
    model.set_attn_processor(SmallHeadAttnProcessor(kernel))
