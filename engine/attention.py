"""Attention maps per prompt token: what the image looks at in the last steps of a run.

SD 1.x and SDXL: cross-attention uses image features as queries and token embeddings as keys (Rombach et al., 2022);
the softmax weights of one token over the image are its map, from the UNet's attn2 layers.

SD3 (MM-DiT, Esser et al., 2024): image and text tokens attend jointly, each query over the keys of both; a prompt
token's map is the weight the image (latent patch) tokens put on that text token, out of their softmax over the
whole joint sequence, from every joint-attention block, on the latent patch grid.

The recorders compute those weights beside the layer's own processor, which still computes the layer's output, so
the generated image is exactly the one a plain run gives. Only the conditional branch's first image is recorded.
"""

from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .models.adapters import model_family
from .errors import EngineError
from .generate import Engine, Result
from .request import Request


class _Recorder:
    """Sums head-averaged attention of the first conditional image, upsampled to the latent size, per call."""

    def __init__(self, batch: int, latent_hw: tuple[int, int], first_step: int):
        self.batch, self.latent_hw, self.first_step = batch, latent_hw, first_step
        self.step, self.total, self.calls = 0, None, 0

    def cond_row(self, rows: int, perturb: torch.Tensor | None) -> int:
        """The batch row of the conditional branch's first image: branches come as [u, c, p] (engine/models/adapters.py),
        and rows marked for the perturbed branch (PAG, SEG) are left out."""
        if perturb is None or not bool(perturb.any()):
            return rows - self.batch
        unmarked = (~perturb).nonzero().squeeze(1)
        return int(unmarked[len(unmarked) - self.batch])

    def record(self, attn, hidden_states: torch.Tensor, context: torch.Tensor, perturb=None) -> None:
        if self.step < self.first_step:
            return
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (N * heads, Q, d)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (N * heads, L, d)
        probs = attn.get_attention_scores(query, key, None)  # (N * heads, Q, L)
        n = hidden_states.shape[0]
        probs = probs.view(n, attn.heads, *probs.shape[1:])[self.cond_row(n, perturb)].mean(0)  # (Q, L): image 0
        lat_h, lat_w = self.latent_hw
        h = round(math.sqrt(probs.shape[0] * lat_h / lat_w))
        maps = probs.T.reshape(1, -1, h, probs.shape[0] // h).float()  # (1, L, h, w)
        maps = F.interpolate(maps, size=self.latent_hw, mode="bilinear", align_corners=False)[0]  # (L, H, W)
        self.total = maps if self.total is None else self.total + maps
        self.calls += 1


def joint_weights(attn, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The softmax weights (heads, N, N + M) of one sample's image tokens (N, C) over the joint keys, image then
    text (M, C'), in float32: the queries and keys of diffusers' JointAttnProcessor2_0 (projections, then SD3.5's
    query-key norms where the layer has them) and the scale of its scaled_dot_product_attention, 1/sqrt(d)."""
    head_dim = attn.to_k.out_features // attn.heads

    def heads(v: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, attn.heads, head_dim).transpose(1, 2)[0]  # (heads, T, d)

    query, key, text_key = heads(attn.to_q(image)), heads(attn.to_k(image)), heads(attn.add_k_proj(text))
    query = query if attn.norm_q is None else attn.norm_q(query)
    key = key if attn.norm_k is None else attn.norm_k(key)
    text_key = text_key if attn.norm_added_k is None else attn.norm_added_k(text_key)
    keys = torch.cat([key, text_key], dim=1).float()  # (heads, N + M, d)
    return torch.softmax(query.float() @ keys.transpose(1, 2) / math.sqrt(head_dim), dim=-1)


class _JointRecorder(_Recorder):
    """SD3: sums the head-averaged weights the image tokens of the first conditional image put on each text token,
    out of their softmax over the joint (image + text) keys, per call, on the latent patch grid (`latent_hw` is the
    grid here: latent height and width over the patch size)."""

    def record(self, attn, hidden_states: torch.Tensor, context: torch.Tensor, perturb=None) -> None:
        if self.step < self.first_step:
            return
        row = self.cond_row(hidden_states.shape[0], perturb)
        image, text = hidden_states[row], context[row]  # (N, C), (M, C')
        weights = joint_weights(attn, image, text)[:, :, image.shape[0]:].mean(0)  # (N, M): image to text tokens
        h, w = self.latent_hw
        maps = weights.T.reshape(-1, h, w)  # (M, h, w): patches in PatchEmbed's row-major order
        self.total = maps if self.total is None else self.total + maps
        self.calls += 1


class _RecordingProcessor:
    """Records the attention weights, then lets the layer's original processor compute its output. It takes the
    perturbed branch's row marks (engine/guiders/perturb.py hands them to processors that say `takes_row_marks`), so the
    recorded row is the conditional one in PAG and SEG runs too."""

    takes_row_marks = True

    def __init__(self, inner, recorder: _Recorder):
        self.inner, self.recorder = inner, recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 perturb: torch.Tensor | None = None, **kwargs):
        if encoder_hidden_states is not None and hidden_states.ndim == 3:
            with torch.no_grad():
                self.recorder.record(attn, hidden_states, encoder_hidden_states, perturb)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


class _JointRecordingProcessor(_RecordingProcessor):
    """SD3's joint attention: records the image-to-text weights where the layer has text tokens (not the image-only
    attn2 of SD3.5's dual-attention blocks), then calls the layer's own processor as the transformer block does."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args,
                 perturb: torch.Tensor | None = None, **kwargs):
        if encoder_hidden_states is not None and getattr(attn, "add_k_proj", None) is not None:
            with torch.no_grad():
                self.recorder.record(attn, hidden_states, encoder_hidden_states, perturb)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


@contextmanager
def _recording(model, recorder: _Recorder, joint: bool = False):
    """Install recording processors on every attn2 (cross-attention) layer of a UNet, or on every joint-attention
    layer (`attn`) of an MM-DiT; restore the originals after."""
    original = model.attn_processors
    if joint:
        patched = {name: _JointRecordingProcessor(p, recorder) if name.endswith(".attn.processor") else p
                   for name, p in original.items()}
    else:
        patched = {name: _RecordingProcessor(p, recorder) if ".attn2." in name else p for name, p in original.items()}
    model.set_attn_processor(patched)
    try:
        yield recorder
    finally:
        model.set_attn_processor(original)


def prompt_tokens(tokenizer, prompt: str) -> list[str]:
    """The prompt's tokens as the text encoder sees them, without the start and end tokens."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    return [t.replace("</w>", "") for t in tokenizer.convert_ids_to_tokens(ids)[1:-1]]


def heatmap(image: Image.Image, weights: np.ndarray) -> Image.Image:
    """A map in 0..1 as a JET heat map laid over the image at half opacity."""
    size = image.size
    heat = cv2.applyColorMap((weights * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
    heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
    return Image.blend(image.convert("RGB"), Image.fromarray(heat), 0.5)


def generate_with_attention(engine: Engine, req: Request, *, last_steps: int | None = None, callback=None,
                            **kwargs) -> tuple[Result, list[tuple[str, np.ndarray]]]:
    """Generate, and return per prompt token the attention map of image 0 (float HxW in 0..1), averaged over heads,
    layers and the last `last_steps` steps (default 30% of the run); all of it on the engine's model thread
    (engine/cpu/runner.py), the maps' tensor work included.

    SD 1.x and SDXL: the cross-attention maps, at the latent size. SD3: the joint-attention maps of image tokens to
    text tokens, at the latent patch grid (latent height / patch, latent width / patch). SD3's text sequence is
    CLIP-L and CLIP-G side by side (their tokens share positions, padded to the joint width), then T5's tokens; the
    maps shown are those of the CLIP positions, named by the CLIP-L tokenizer's tokens (start, end and padding
    left out). With T5 present its positions take part in the softmax but get no maps of their own here.

    The run's batch is not cut across the CPU's cores (engine/cpu/parallel.py) while the maps are recorded, so the
    recorders see whole batches; a batch below the split's size (16 rows) runs whole anyway."""
    run = contextvars.copy_context().run  # the request's work limit (engine/meter.py) goes with it
    return engine.runner.call(run, _generate_with_attention, engine, req, last_steps, callback, **kwargs)


def _generate_with_attention(engine: Engine, req: Request, last_steps: int | None, callback,
                             **kwargs) -> tuple[Result, list[tuple[str, np.ndarray]]]:
    pipe = engine.loaded(engine.model_spec(req))
    family = model_family(pipe) if req.task != "class" else "dit"
    if family == "dit":
        raise EngineError("Attention maps per prompt token need a text-to-image model (SD 1.x, SDXL or SD3); a "
                          "class-conditional model has no prompt tokens.")
    joint = family == "sd3"
    denoiser = pipe.transformer if joint else pipe.unet
    factor = pipe.vae_scale_factor
    side = denoiser.config.sample_size
    latent_hw = ((req.height // factor) if req.height else side, (req.width // factor) if req.width else side)
    last_steps = last_steps or max(1, round(0.3 * req.steps))
    first_step = max(0, req.steps - last_steps)
    if joint:
        patch = denoiser.config.patch_size
        recorder = _JointRecorder(req.num_images, (latent_hw[0] // patch, latent_hw[1] // patch), first_step)
    else:
        recorder = _Recorder(req.num_images, latent_hw, first_step)

    def step_done(info):
        recorder.step = info["i"] + 1
        if callback is not None:
            callback(info)

    whole = engine.store.cpu.whole_batches() if engine.store.cpu is not None else nullcontext()
    with whole, _recording(denoiser, recorder, joint):  # on the model thread: no run overlaps
        result = engine.generate(replace(req), callback=step_done, **kwargs)
    tokens = prompt_tokens(pipe.tokenizer, req.prompt)
    if recorder.total is None:
        return result, []
    maps = recorder.total[1:1 + len(tokens)] / recorder.calls  # (T, H, W): skip the start token
    maps = maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return result, list(zip(tokens, maps.cpu().numpy()))
