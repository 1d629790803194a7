"""Perturbed self-attention, the worse prediction that PAG and SEG guide away from, in the same batch as the others.

For one run the engine wraps every attention processor of the model (`perturbed_attention`). The denoiser marks the
rows of its batch that form the perturbed branch with a boolean `perturb` tensor passed through
`cross_attention_kwargs`, so the rows stay marked when the batch splitter cuts the batch across cores. Unmarked rows
go through the layer's own processor unchanged; marked rows, in the chosen self-attention layers only, get:
- "identity" (PAG, Ahn et al. 2024): the attention map replaced by the identity, so each token's output is its own
  value, exactly as diffusers' PAGIdentitySelfAttnProcessor2_0 computes its perturbed half;
- "blur" (SEG, Hong 2024): the queries blurred over the image grid by a 2D Gaussian of sigma before attending; a
  sigma of INFINITE_SIGMA or more is the paper's infinite limit, every query the mean query (uniform attention).

Layers are named as the lab's `--pag-layers` writes them: `mid`, `down.N`, `up.N` (a UNet's down_blocks.N and
up_blocks.N), `blocks.N` (a transformer's transformer_blocks.N), or a longer diffusers path such as
`up_blocks.0.attentions.1`, comma-separated. Each id selects the self-attention layers whose module path contains it,
diffusers' PAG rule (`blocks.1` does not select `blocks.10`). On SD3 the default `mid` means `blocks.1`
(FAMILY_LAYERS; engine/guiders/branch.py writes the layers used into the settings, so the image's parameters name
them). In SD3's joint attention the perturbation acts on the image tokens, as diffusers' PAGJointAttnProcessor2_0
defines it; the text tokens attend as before.

A new perturbation subclasses AttentionPerturbation, names its own mode and overrides `attend` (and `attend_joint`
for SD3's joint attention); its guider hands it to an AttentionBranch (engine/guiders/branch.py).
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from ..errors import EngineError

INFINITE_SIGMA = 10000.0
LAYER_PATTERN = r"[a-z_]+(\.\d+){0,4}(\s*,\s*[a-z_]+(\.\d+){0,4}){0,7}"  # up to 8 ids; no user regex reaches re
_SHORT = (("down.", "down_blocks."), ("up.", "up_blocks."), ("blocks.", "transformer_blocks."))
# The layers a run of a family takes when the request leaves PAG's or SEG's layers at their default, `mid`, which
# that family's model has not: SD3's MM-DiT has transformer blocks only; diffusers' SD3 PAG pipeline uses blocks.1.
FAMILY_LAYERS = {"sd3": "blocks.1"}


@dataclass(frozen=True)
class AttentionPerturbation:
    """How the perturbed branch attends in `layers`: mode "identity" (PAG) or "blur" (SEG, with `sigma`). A subclass
    names a mode of its own and overrides `attend` (and `attend_joint`). Frozen and compared by value: the processors'
    computation keys (engine/cpu/graph.py) hold it."""

    mode: str
    layers: str
    sigma: float = INFINITE_SIGMA

    def __post_init__(self):
        if type(self).attend is AttentionPerturbation.attend and self.mode not in _BUILT_IN:
            raise ValueError(f"Unknown attention perturbation {self.mode!r}; a new one overrides attend().")

    def attend(self, attn: Attention, hidden_states: torch.Tensor, temb=None) -> torch.Tensor:
        """The marked rows' output of one chosen self-attention layer, from its input (B, N, C) or (B, C, H, W), as
        the layer's own processor would return it."""
        if self.mode == "identity":
            return identity_attention(attn, hidden_states, temb)
        return blurred_query_attention(attn, hidden_states, self.sigma, temb)

    def attend_joint(self, attn: Attention, hidden_states: torch.Tensor,
                     context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SD3's joint attention of the marked rows: the image and text outputs (joint_perturbed_attention)."""
        if type(self).attend is not AttentionPerturbation.attend:  # a new perturbation that wrote no joint form
            raise EngineError(f"The '{self.mode}' attention perturbation has no form for SD3's joint attention.")
        return joint_perturbed_attention(attn, hidden_states, context, self)


_BUILT_IN = ("identity", "blur")


def layer_ids(layers: str) -> list[str]:
    """The diffusers module-path fragments of a lab layer list: `down.1` -> `down_blocks.1`."""
    ids = []
    for raw in layers.split(","):
        layer = raw.strip()
        for short, full in _SHORT:
            if layer.startswith(short) and not layer.startswith(full):
                layer = full + layer[len(short):]
                break
        ids.append(layer)
    return ids


def _matches(layer_id: str, name: str) -> bool:
    """diffusers' PAG rule: the id occurs in the path, and an id ending in a number is not a prefix of a longer one."""
    if re.search(layer_id, name) is None:  # ids passed LAYER_PATTERN: letters, digits, "_" and "."
        return False
    last_id, last_name = layer_id.split(".")[-1], name.split(".")[-1]
    return not (last_id.isnumeric() and last_name.isnumeric() and last_id == last_name)


def self_attention_layers(model: torch.nn.Module, layers: str) -> list[str]:
    """Module paths of the self-attention layers `layers` selects; one sentence when an id selects none."""
    if not re.fullmatch(LAYER_PATTERN, layers.strip()):
        raise EngineError(f"Attention layers are written like 'mid', 'down.1' or 'up.0,mid'; {layers[:60]!r} is not.")
    names = [n for n, m in model.named_modules() if isinstance(m, Attention) and not m.is_cross_attention]
    chosen: list[str] = []
    for layer_id in layer_ids(layers):
        found = [n for n in names if _matches(layer_id, n)]
        if not found:
            blocks = sorted({".".join(n.split(".")[:2]) for n in names})
            raise EngineError(f"This model has no self-attention layer '{layer_id}'; it has: {', '.join(blocks)}.")
        chosen += [n for n in found if n not in chosen]
    return chosen


def _tokens(attn: Attention, hidden_states: torch.Tensor, temb):
    """The layer's input as (B, N, C) tokens after its norms, with what `_output` needs to undo the layout."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = hidden_states.shape
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.view(shape[0], shape[1], shape[2] * shape[3]).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, residual, shape


def _output(attn: Attention, attended: torch.Tensor, residual: torch.Tensor, shape) -> torch.Tensor:
    """The output projection, the input's layout, the residual and the rescale, as diffusers' processors end."""
    out = attn.to_out[1](attn.to_out[0](attended))
    if len(shape) == 4:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def identity_attention(attn: Attention, hidden_states: torch.Tensor, temb=None) -> torch.Tensor:
    """The layer with its attention map replaced by the identity: the output projection of each token's value."""
    tokens, residual, shape = _tokens(attn, hidden_states, temb)
    return _output(attn, attn.to_v(tokens), residual, shape)


def blur_queries(query: torch.Tensor, sigma: float) -> torch.Tensor:
    """Queries (B, N, D) of a square token grid blurred over the grid by a Gaussian of `sigma` (reflect padding, a
    kernel of about 6 sigma, as the SEG reference code); sigma >= INFINITE_SIGMA gives every token the mean query.
    Tokens past the largest square (none for the lab's models) are left as they are."""
    batch, tokens, dim = query.shape
    side = int(math.isqrt(tokens))
    square = query[:, : side * side].transpose(1, 2).reshape(batch, dim, side, side)
    if sigma >= INFINITE_SIGMA:
        square = square.mean(dim=(-2, -1), keepdim=True).expand_as(square)
    else:
        size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
        size = min(size, side - (side % 2 - 1))  # odd, and no wider than the grid allows for reflect padding
        half = (size - 1) / 2
        x = torch.linspace(-half, half, steps=size, dtype=query.dtype, device=query.device)
        kernel1d = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel1d = kernel1d / kernel1d.sum()
        kernel2d = (kernel1d[:, None] * kernel1d[None, :]).expand(dim, 1, size, size)
        pad = size // 2
        square = F.conv2d(F.pad(square, [pad] * 4, mode="reflect"), kernel2d, groups=dim)
    blurred = square.reshape(batch, dim, side * side).transpose(1, 2)
    return torch.cat([blurred, query[:, side * side:]], dim=1)


def blurred_query_attention(attn: Attention, hidden_states: torch.Tensor, sigma: float, temb=None) -> torch.Tensor:
    """Self-attention with the queries blurred (SEG's smoothed energy), keys and values untouched."""
    tokens, residual, shape = _tokens(attn, hidden_states, temb)
    rows = tokens.shape[0]
    query = blur_queries(attn.to_q(tokens), sigma)
    key, value = attn.to_k(tokens), attn.to_v(tokens)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (v.view(rows, -1, attn.heads, head_dim).transpose(1, 2) for v in (query, key, value))
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    return _output(attn, out.transpose(1, 2).reshape(rows, -1, attn.heads * head_dim).to(query.dtype), residual, shape)


def joint_perturbed_attention(attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor,
                              perturbation: AttentionPerturbation) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's joint attention of image tokens (B, N, C) and text tokens (B, M, C), perturbed on the image side:
    "identity" masks every image-to-image weight but the diagonal, as diffusers' PAGJointAttnProcessor2_0 does (each
    image token attends to itself and to the text), "blur" blurs the image tokens' queries (SEG). Returns the image
    and text outputs, as the layer's own processor does."""
    rows, tokens = hidden_states.shape[:2]
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)  # (B, N, D)
    if perturbation.mode == "blur":
        query = blur_queries(query, perturbation.sigma)
    text_q, text_k, text_v = attn.add_q_proj(context), attn.add_k_proj(context), attn.add_v_proj(context)  # (B, M, D)
    head_dim = key.shape[-1] // attn.heads

    def heads(v: torch.Tensor) -> torch.Tensor:
        return v.view(rows, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, T, d)

    query, key, text_q, text_k = heads(query), heads(key), heads(text_q), heads(text_k)
    # SD3.5's query-key norms, where the layer has them, as JointAttnProcessor2_0 applies them
    query = query if attn.norm_q is None else attn.norm_q(query)
    key = key if attn.norm_k is None else attn.norm_k(key)
    text_q = text_q if attn.norm_added_q is None else attn.norm_added_q(text_q)
    text_k = text_k if attn.norm_added_k is None else attn.norm_added_k(text_k)
    query, key = torch.cat([query, text_q], dim=2), torch.cat([key, text_k], dim=2)  # (B, H, N + M, d)
    value = torch.cat([heads(value), heads(text_v)], dim=2)
    mask = None
    if perturbation.mode == "identity":
        mask = torch.zeros((query.shape[2], query.shape[2]), device=query.device, dtype=query.dtype)
        mask[:tokens, :tokens] = float("-inf")
        mask[:tokens, :tokens].fill_diagonal_(0)
        mask = mask[None, None]  # (1, 1, N + M, N + M)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(rows, -1, attn.heads * head_dim).to(query.dtype)  # (B, N + M, D)
    image, text = out[:, :tokens], out[:, tokens:]
    image = attn.to_out[1](attn.to_out[0](image))
    if not attn.context_pre_only:
        text = attn.to_add_out(text)
    return image, text


class PerturbableProcessor:
    """Wraps a layer's processor for one run: rows marked in `perturb` get the perturbation when this layer is a
    chosen one, every other row the wrapped processor."""

    def __init__(self, inner, perturbation: AttentionPerturbation | None):
        self.inner = inner
        self.perturbation = perturbation  # None: not a chosen layer

    def computation_key(self) -> tuple | None:
        """What this wrapper computes, for engine/cpu/graph.py: its perturbation over what its processor computes;
        None when that processor cannot say."""
        inner = getattr(self.inner, "computation_key", None)
        key = inner() if inner is not None else None
        return None if key is None else ("perturbable", key, self.perturbation)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 perturb: torch.Tensor | None = None, **kwargs):
        if getattr(self.inner, "takes_row_marks", False):  # a recorder of attention maps (engine/attention.py)
            kwargs["perturb"] = perturb
        if self.perturbation is None or perturb is None or not bool(perturb.any()):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        keep = (~perturb).nonzero().squeeze(1)
        marked = perturb.nonzero().squeeze(1)
        if "perturb" in kwargs:
            kwargs["perturb"] = perturb[keep]  # the rows the wrapped processor gets: none of them marked
        if encoder_hidden_states is not None and getattr(attn, "add_q_proj", None) is not None:
            return self._joint(attn, hidden_states, encoder_hidden_states, attention_mask, keep, marked, kwargs)
        perturbed = self.perturbation.attend(attn, hidden_states[marked], temb)
        if len(keep) == 0:
            return perturbed
        kept = self.inner(attn, hidden_states[keep], encoder_hidden_states, attention_mask, temb, **kwargs)
        out = torch.empty((hidden_states.shape[0], *kept.shape[1:]), dtype=kept.dtype, device=kept.device)
        out[keep], out[marked] = kept, perturbed.to(kept.dtype)
        return out

    def _joint(self, attn, hidden_states, context, attention_mask, keep, marked, kwargs):
        """SD3's joint attention layers: image and text rows split alike, both outputs reassembled."""
        perturbed = self.perturbation.attend_joint(attn, hidden_states[marked], context[marked])
        if len(keep) == 0:
            return perturbed
        kept = self.inner(attn, hidden_states[keep], context[keep], attention_mask, **kwargs)
        outs = []
        for k, p in zip(kept, perturbed):
            out = torch.empty((hidden_states.shape[0], *k.shape[1:]), dtype=k.dtype, device=k.device)
            out[keep], out[marked] = k, p.to(k.dtype)
            outs.append(out)
        return tuple(outs)


@contextmanager
def perturbed_attention(model: torch.nn.Module, perturbation: AttentionPerturbation):
    """For the `with` block, `model` accepts `cross_attention_kwargs={"perturb": rows}` and perturbs those rows in
    the chosen layers; its own processors come back afterwards."""
    chosen = set(self_attention_layers(model, perturbation.layers))
    original = model.attn_processors  # {"path.processor": processor}
    wrapped = {key: PerturbableProcessor(proc, perturbation if key.rsplit(".", 1)[0] in chosen else None)
               for key, proc in original.items()}
    model.set_attn_processor(wrapped)
    try:
        yield
    finally:
        model.set_attn_processor(original)
