"""Perceiver resampler for image-encoder tokens (``image_embed.*``, reference ``imagedream.md`` §2.5).

Learned queries (``latents``) cross-attend, layer by layer, to the projected image features
concatenated with themselves, then go through a small MLP. In ImageDream it maps the CLIP
ViT-H penultimate hidden states [N, 257, 1280] to 16 tokens of width 1024 that are appended to
the text context.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import sdpa_heads

__all__ = ["PerceiverAttention", "Resampler"]


class PerceiverAttention(nn.Module):
    """Keys ``norm1`` (features), ``norm2`` (latents), ``to_q``, ``to_kv``, ``to_out`` (no biases).

    q from the normed latents; k, v from ``to_kv`` of concat(normed features, normed latents)
    along tokens, split channel-wise into [k | v]. Scale ``1/sqrt(dim_head)`` (the original's
    ``(q s)(k s)^T`` with ``s = dim_head**-0.25``). The original computes the softmax in float32
    and casts back; SDPA's fused CUDA kernels accumulate in float32 as well, so only the
    rounding of the fp16 logits can differ.
    """

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(
        self,
        x: Tensor,  # [N, T, dim] image features (after proj_in)
        latents: Tensor,  # [N, Q, dim]
    ) -> Tensor:  # [N, Q, dim]
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        return self.to_out(sdpa_heads(q, k, v, self.heads))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    """Keys ``0`` (LayerNorm), ``1`` (Linear, no bias), ``3`` (Linear, no bias); GELU at ``2``."""
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
    )


class Resampler(nn.Module):
    """``latents`` [1, Q, dim]; ``proj_in`` (embedding_dim -> dim); ``layers.n.{0: attention, 1: FF}``;
    ``proj_out`` (dim -> output_dim) then ``norm_out`` (LayerNorm)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        dim_head: int,
        heads: int,
        num_queries: int,
        embedding_dim: int,
        output_dim: int,
        ff_mult: int = 4,
    ):
        super().__init__()
        # Construction draws from the CPU RNG (reference §5 pitfall 4); real weights overwrite it.
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), _feed_forward(dim, ff_mult)]) for _ in range(depth)
        )

    def forward(
        self,
        x: Tensor,  # [N, T, embedding_dim] image-encoder tokens (CLIP: [N, 257, 1280])
    ) -> Tensor:  # [N, Q, output_dim]
        latents = self.latents.to(x.dtype).expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
