"""Convolutional building blocks of the multi-view U-Net (reference ``imagedream.md`` §2.1-§2.3).

Module and sub-module indices are chosen so that parameter names match ImageDream's state
dict (e.g. ``in_layers.2`` is the first conv because ``in_layers`` = [GroupNorm, SiLU, Conv]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["timestep_embedding", "ResBlock", "Downsample", "Upsample"]


def timestep_embedding(
    timesteps: Tensor,  # [N] (any float/int dtype)
    dim: int,
    max_period: float = 10000.0,
) -> Tensor:  # [N, dim] float32
    """Sinusoidal timestep embedding, reference §2.1 step 1.

    ``freq_i = exp(-ln(max_period) * i / half)`` for ``i < half = dim // 2`` and the embedding is
    ``[cos(t * freq), sin(t * freq)]`` (cos first), computed in float32 (the caller casts it to
    the model dtype). An odd ``dim`` gets one zero column appended.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.reshape(-1).float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    """ResBlock with additive timestep(+camera) embedding, reference §2.3.

    ``h = in_layers(x) + emb_layers(emb)``; ``out = skip(x) + out_layers(h)``; the skip is the
    identity, or a 1x1 conv (``skip_connection``) when the channel count changes. No
    scale-shift norm (``use_scale_shift_norm`` is False in ImageDream).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int = 32, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, in_ch, eps=1e-5), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_ch, eps=1e-5),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(
        self,
        x: Tensor,  # [N, Cin, H, W]
        emb: Tensor,  # [N, emb_dim]
    ) -> Tensor:  # [N, Cout, H, W]
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """3x3 conv with stride 2, padding 1 (state-dict key ``op``), reference §2.2."""

    def __init__(self, ch: int):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, C, ceil(H/2), ceil(W/2)]
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 upsampling then a 3x3 conv (state-dict key ``conv``), reference §2.2."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, C, 2H, 2W]
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
