"""Attention blocks of the multi-view U-Net (reference ``imagedream.md`` §2.4).

All attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (SDPA) with
the ``[batch, heads, tokens, head_dim]`` layout and the default scale ``1/sqrt(head_dim)``;
that is the same math as the original's xformers ``memory_efficient_attention`` (§2.4 last
bullet), runs on CPU, and picks flash / memory-efficient kernels in fp16/bf16 on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "position_encoding_2d",
    "sdpa_heads",
    "CrossAttention",
    "FeedForward",
    "BasicTransformerBlock3D",
    "SpatialTransformer3D",
]


def sdpa_heads(
    q: Tensor,  # [B, Lq, H*D]
    k: Tensor,  # [B, Lk, H*D]
    v: Tensor,  # [B, Lk, H*D]
    heads: int,
) -> Tensor:  # [B, Lq, H*D]
    """Multi-head softmax(q k^T / sqrt(D)) v; head h uses channels [h*D, (h+1)*D)."""
    b, lq, c = q.shape
    d = c // heads
    q = q.reshape(b, lq, heads, d).transpose(1, 2)
    k = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.reshape(b, v.shape[1], heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)  # [B, H, Lq, D]
    return out.transpose(1, 2).reshape(b, lq, c)


class CrossAttention(nn.Module):
    """Multi-head (self- or cross-) attention with an optional image-prompt branch (§2.4).

    * Self-attention (``context=None``): keys/values from ``x``. Used as ``attn1``.
    * Cross-attention: keys/values from ``context`` (``to_k``/``to_v``: context_dim -> C, no bias).
    * With ``ip_dim > 0`` (``attn2`` of ImageDream): the last ``ip_dim`` context tokens are the
      image-prompt tokens; they get their own ``to_k_ip``/``to_v_ip`` and a separate softmax,
      ``out = Attn(q, k_txt, v_txt) + ip_weight * Attn(q, k_ip, v_ip)``, then ``to_out`` once.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None,
        heads: int,
        dim_head: int,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads, self.ip_dim, self.ip_weight = heads, ip_dim, ip_weight
        if ip_dim > 0:  # registered first: the released checkpoint lists them before to_q
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(
        self,
        x: Tensor,  # [B, L, C]
        context: Tensor | None = None,  # [B, T (+ ip_dim), context_dim]; None = self-attention
    ) -> Tensor:  # [B, L, C]
        q = self.to_q(x)
        if context is None:
            return self.to_out(sdpa_heads(q, self.to_k(x), self.to_v(x), self.heads))
        if self.ip_dim > 0:
            if context.shape[1] <= self.ip_dim:
                raise ValueError(
                    f"context has {context.shape[1]} tokens; expected text tokens followed by {self.ip_dim} ip tokens"
                )
            text, ip = context[:, : -self.ip_dim], context[:, -self.ip_dim :]
            out = sdpa_heads(q, self.to_k(text), self.to_v(text), self.heads)
            out = out + self.ip_weight * sdpa_heads(q, self.to_k_ip(ip), self.to_v_ip(ip), self.heads)
        else:
            out = sdpa_heads(q, self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    """``proj``: C -> 2*inner; output ``a * gelu(g)`` with ``[a | g]`` the two halves (exact GELU)."""

    def __init__(self, dim_in: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * inner)

    def forward(self, x: Tensor) -> Tensor:  # [..., C] -> [..., inner]
        a, g = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(g)


class FeedForward(nn.Module):
    """GEGLU feed-forward, keys ``net.0.proj`` (C -> 8C) and ``net.2`` (4C -> C), §2.4 step 3."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:  # [..., C] -> [..., C]
        return self.net(x)


class BasicTransformerBlock3D(nn.Module):
    """Multi-view self-attention, text+IP cross-attention, feed-forward (§2.4).

    ``attn1`` sees all ``num_frames`` views of an object jointly: rows grouped ``(b f)`` (object
    major, view minor) are regrouped to one sequence of ``f * L`` tokens per object (view-major
    concatenation), so every pixel attends to every pixel of every view, including the image view.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, ip_dim, ip_weight, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        x: Tensor,  # [B*F, L, C]
        context: Tensor,  # [B*F, T (+ ip_dim), context_dim]
        num_frames: int,
    ) -> Tensor:  # [B*F, L, C]
        bf, length, c = x.shape
        x = x.reshape(bf // num_frames, num_frames * length, c)  # [B, F*L, C]
        x = self.attn1(self.norm1(x)) + x
        x = x.reshape(bf, length, c)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


def position_encoding_2d(
    h: int,
    w: int,
    dim: int,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:  # [h*w, dim]
    """Fixed 2D sin-cos encoding of (row, column): ``dim / 4`` frequencies ``10000^(-i / (dim / 4))``
    each for sin/cos of the row and of the column (MAE / DiT style). No parameters."""
    if dim % 4:
        raise ValueError(f"position encoding needs a width divisible by 4, got {dim}")
    q = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(q, device=device, dtype=torch.float32) / q)  # [q]
    rows = torch.arange(h, device=device, dtype=torch.float32)[:, None, None] * omega  # [h, 1, q]
    cols = torch.arange(w, device=device, dtype=torch.float32)[None, :, None] * omega  # [1, w, q]
    enc = torch.cat(
        [
            rows.sin().expand(h, w, q),
            rows.cos().expand(h, w, q),
            cols.sin().expand(h, w, q),
            cols.cos().expand(h, w, q),
        ],
        dim=-1,
    )  # [h, w, dim]
    return enc.reshape(h * w, dim).to(dtype or torch.float32)


class SpatialTransformer3D(nn.Module):
    """GroupNorm (eps 1e-6) -> Linear ``proj_in`` -> transformer blocks -> Linear ``proj_out`` + residual (§2.4).

    ``position_encoding`` (not in ImageDream; off in its preset) adds ``position_encoding_2d`` to the
    tokens after ``proj_in``, the same grid in every view. ImageDream's attention has no position
    signal, so "the token at my position in the image view" can only be found by content; a small
    model trained briefly from scratch does not learn that (the tiny teacher's seen view stayed a
    blur, docs/teacher.md). Parameter-free: the state dict is unchanged.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        depth: int = 1,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
        groups: int = 32,
        dropout: float = 0.0,
        position_encoding: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        self.position_encoding = bool(position_encoding)
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock3D(inner, heads, dim_head, context_dim, ip_dim, ip_weight, dropout)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(
        self,
        x: Tensor,  # [B*F, C, H, W]
        context: Tensor,  # [B*F, T (+ ip_dim), context_dim]
        num_frames: int,
    ) -> Tensor:  # [B*F, C, H, W]
        n, c, h, w = x.shape
        y = self.norm(x).reshape(n, c, h * w).transpose(1, 2)  # [N, H*W, C]
        y = self.proj_in(y)
        if self.position_encoding:
            y = y + position_encoding_2d(h, w, y.shape[-1], y.device, y.dtype)
        for block in self.transformer_blocks:
            y = block(y, context, num_frames)
        y = self.proj_out(y).transpose(1, 2).reshape(n, c, h, w)
        return y + x
