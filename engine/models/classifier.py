"""The lab's noise-aware classifier p(y | x_t, t) of latents, the model classifier guidance differentiates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import EngineError


class TimeResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the timestep embedding added in between, as in a diffusion UNet's ResBlock."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.time_proj(F.silu(temb))[:, :, None, None]  # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, H, W)
        return self.skip(x) + h


class NoiseAwareClassifier(ModelMixin, ConfigMixin):
    """A classifier of noised latents at every timestep, the p_phi(y | x_t, t) of Dhariwal and Nichol (2021)."""

    @register_to_config
    def __init__(self, class_names: list[str] | tuple[str, ...],
                 in_channels: int = 4, sample_size: int = 16, block_out_channels: tuple[int, ...] = (32, 64, 128),
                 time_embed_dim: int = 128, norm_num_groups: int = 8):
        super().__init__()
        self.time_proj = Timesteps(time_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(time_embed_dim, time_embed_dim)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        channels = [block_out_channels[0], *block_out_channels]
        self.blocks = nn.ModuleList(TimeResBlock(c_in, c_out, time_embed_dim, norm_num_groups)
                                    for c_in, c_out in zip(channels[:-1], channels[1:]))
        # Each block but the last halves the resolution: 16 -> 8 -> 4 for three blocks.
        self.downsamples = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in block_out_channels[:-1])
        self.norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1])
        self.head = nn.Linear(block_out_channels[-1], len(class_names))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int) -> torch.Tensor:
        """Logits (B, num_classes) of noised latents x (B, C, H, W) at timesteps t, (B,) or a scalar."""
        x = x.to(self.dtype)
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])  # (B,)
        temb = self.time_embedding(self.time_proj(t).to(self.dtype))  # (B, T)
        h = self.conv_in(x)  # (B, C0, H, W)
        for i, block in enumerate(self.blocks):
            h = block(h, temb)  # (B, Ci, H_i, W_i)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)  # (B, Ci, H_i / 2, W_i / 2)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))  # (B, C_last)
        return self.head(h)  # (B, num_classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def label_id(self, label: str | int) -> int:
        """The class id of a name or an id given as int or digit string."""
        names = self.class_names
        if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
            label_id = int(label)
            if not 0 <= label_id < len(names):
                raise EngineError(f"The classifier's class id must be from 0 to {len(names) - 1}, not {label_id}.")
            return label_id
        if label not in names:
            raise EngineError(f"The classifier does not know the class '{label}'; it knows: {', '.join(names)}.")
        return names.index(label)
