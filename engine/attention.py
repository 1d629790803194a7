"""Cross-attention maps per prompt token: what the UNet's attn2 layers look at in the last steps of a run.

Cross-attention uses image features as queries and token embeddings as keys (Rombach et al., 2022); the softmax
weights of one token over the image are its map. The recorder computes those weights beside the layer's own
processor, so the generated image is exactly the one a plain run gives.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import EngineError
from .generate import Engine, Result
from .request import Request


class _Recorder:
    """Sums head-averaged attention of the first conditional image, upsampled to the latent size, per call."""

    def __init__(self, batch: int, latent_hw: tuple[int, int], first_step: int):
        self.batch, self.latent_hw, self.first_step = batch, latent_hw, first_step
        self.step, self.total, self.calls = 0, None, 0

    def record(self, attn, hidden_states: torch.Tensor, context: torch.Tensor) -> None:
        if self.step < self.first_step:
            return
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (N * heads, Q, d)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (N * heads, L, d)
        probs = attn.get_attention_scores(query, key, None)  # (N * heads, Q, L)
        n = hidden_states.shape[0]
        probs = probs.view(n, attn.heads, *probs.shape[1:])[n - self.batch].mean(0)  # (Q, L): image 0, cond
        lat_h, lat_w = self.latent_hw
        h = round(math.sqrt(probs.shape[0] * lat_h / lat_w))
        maps = probs.T.reshape(1, -1, h, probs.shape[0] // h).float()  # (1, L, h, w)
        maps = F.interpolate(maps, size=self.latent_hw, mode="bilinear", align_corners=False)[0]  # (L, H, W)
        self.total = maps if self.total is None else self.total + maps
        self.calls += 1


class _RecordingProcessor:
    """Records the attention weights, then lets the layer's original processor compute its output."""

    def __init__(self, inner, recorder: _Recorder):
        self.inner, self.recorder = inner, recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None and hidden_states.ndim == 3:
            with torch.no_grad():
                self.recorder.record(attn, hidden_states, encoder_hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


@contextmanager
def _recording(unet, recorder: _Recorder):
    """Install recording processors on every attn2 (cross-attention) layer; restore the originals after."""
    original = unet.attn_processors
    patched = {name: _RecordingProcessor(p, recorder) if ".attn2." in name else p for name, p in original.items()}
    unet.set_attn_processor(patched)
    try:
        yield recorder
    finally:
        unet.set_attn_processor(original)


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
    """Generate, and return per prompt token the cross-attention map of image 0 (float HxW in 0..1); all of it on
    the engine's model thread (engine/runner.py), the maps' tensor work included."""
    return engine.runner.call(_generate_with_attention, engine, req, last_steps, callback, **kwargs)


def _generate_with_attention(engine: Engine, req: Request, last_steps: int | None, callback,
                             **kwargs) -> tuple[Result, list[tuple[str, np.ndarray]]]:
    pipe = engine.loaded(engine.model_spec(req))
    if getattr(pipe, "unet", None) is None:
        raise EngineError("Cross-attention maps come from a UNet's cross-attention layers (SD 1.x, SDXL); this "
                          "model's joint attention has none.")
    factor = pipe.vae_scale_factor
    side = pipe.unet.config.sample_size
    latent_hw = ((req.height // factor) if req.height else side, (req.width // factor) if req.width else side)
    last_steps = last_steps or max(1, round(0.3 * req.steps))
    recorder = _Recorder(req.num_images, latent_hw, max(0, req.steps - last_steps))

    def step_done(info):
        recorder.step = info["i"] + 1
        if callback is not None:
            callback(info)

    with _recording(pipe.unet, recorder):
        result = engine.generate(replace(req), callback=step_done, **kwargs)
    tokens = prompt_tokens(pipe.tokenizer, req.prompt)
    if recorder.total is None:
        return result, []
    maps = recorder.total[1:1 + len(tokens)] / recorder.calls  # (T, H, W): skip the start token
    maps = maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return result, list(zip(tokens, maps.cpu().numpy()))
