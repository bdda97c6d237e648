"""The tiny teacher's image tokenizer (``TinyImageEncoder``): the CPU stand-in for CLIP ViT-H.

ImageDream feeds the perceiver resampler CLIP's penultimate hidden states [B, 257, 1280]
(CLS + 16x16 patch tokens). The tiny teacher has no pretrained encoder, so it learns a small
one jointly with its U-Net:

    x [B, 3, 32, 32] in [0, 1] (RGB already composited on the background)
      -> 2x - 1
      -> stem: Conv3x3(3 -> 32) -> GroupNorm(8) -> SiLU           (local colour/edge features)
      -> patchify: Conv(32 -> 64, kernel = stride = 4)            (one token per 4x4 patch)
      -> + learned position embedding, LayerNorm
      -> tokens [B, 64, 64]                                        (8x8 patches, width = ip_embed_dim)

Why this shape: patch tokens keep *where* each colour is (the resampler's queries and the
U-Net's IP cross-attention can look up the part of the object a view needs), which is what
CLIP's patch tokens give ImageDream; a 4x4 patch on a 32 px image covers about the same
fraction of the object as a 14x14 patch on 224 px (1/8 vs 1/16 of the side). No CLS token:
the resampler's learned queries already pool globally. There is no transformer inside the
encoder: the resampler (2 layers) and the U-Net's cross-attention do the mixing, and the
encoder stays ~40k parameters. The pixel-exact input enters the U-Net anyway through ``ip_img``
(the image-view slot), so the tokens only need to carry what/where, not every pixel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["TinyImageEncoderConfig", "TinyImageEncoder"]


@dataclass(frozen=True)
class TinyImageEncoderConfig:
    in_channels: int = 3
    resolution: int = 32  # input side in pixels (the tiny layout's resolution)
    patch_size: int = 4
    stem_channels: int = 32
    embed_dim: int = 64  # token width; must equal the U-Net config's ip_embed_dim
    norm_num_groups: int = 8

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if int(getattr(self, f.name)) <= 0:
                raise ValueError(f"TinyImageEncoderConfig.{f.name} must be positive, got {getattr(self, f.name)}")
        if self.resolution % self.patch_size:
            raise ValueError(f"resolution {self.resolution} is not a multiple of patch_size {self.patch_size}")
        if self.stem_channels % self.norm_num_groups:
            raise ValueError(
                f"stem_channels {self.stem_channels} not divisible by norm_num_groups {self.norm_num_groups}"
            )

    @property
    def num_tokens(self) -> int:
        return (self.resolution // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TinyImageEncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TinyImageEncoderConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


class TinyImageEncoder(nn.Module):
    """Conv stem + patchify conv -> ``[B, (R/p)^2, embed_dim]`` tokens (see module doc)."""

    def __init__(self, config: TinyImageEncoderConfig | Mapping[str, Any] | None = None):
        super().__init__()
        cfg = self.config = (
            config if isinstance(config, TinyImageEncoderConfig) else TinyImageEncoderConfig.from_dict(config or {})
        )
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.stem_channels, 3, padding=1),
            nn.GroupNorm(cfg.norm_num_groups, cfg.stem_channels),
            nn.SiLU(),
        )
        self.patchify = nn.Conv2d(cfg.stem_channels, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_tokens, cfg.embed_dim) * 0.02)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(
        self,
        x: Tensor,  # [B, in_channels, R, R] in [0, 1]
    ) -> Tensor:  # [B, (R/p)^2, embed_dim]
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.resolution, cfg.resolution):
            raise ValueError(
                f"TinyImageEncoder expects [B, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution}], "
                f"got {list(x.shape)}"
            )
        h = self.patchify(self.stem(x * 2.0 - 1.0))  # [B, D, R/p, R/p]
        tokens = h.flatten(2).transpose(1, 2)  # [B, T, D], row-major patches
        return self.norm(tokens + self.pos_embed.to(tokens.dtype))
