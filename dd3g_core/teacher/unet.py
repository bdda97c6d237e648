"""ImageDream's multi-view U-Net (``MultiViewUNet``), our own implementation.

Written from ``imagedream.md`` (project reference, §2): an LDM U-Net whose
SpatialTransformer3D blocks attend jointly across all views of an object, whose residual
blocks are conditioned on timestep + camera, whose cross-attention sees text tokens plus
image-prompt tokens from a perceiver resampler, and whose last view of every object is the
input image (its clean latent, the "pixel controller", overwrites that row of ``x``).

Rows of every batch tensor are grouped ``(b f)``: object major, view minor, ``f = num_frames``
(ImageDream: 4 generated views + 1 image view, so ``num_frames = 5``).
With ``MultiViewUNetConfig.preset("imagedream")`` the state dict matches the released
checkpoint name for name and shape (773 tensors, 941,672,900 parameters); load it with
``load_unet_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..weights import check_state_dict, load_unet_state_dict
from .attention import SpatialTransformer3D
from .blocks import Downsample, ResBlock, Upsample, timestep_embedding
from .config import MultiViewUNetConfig
from .resampler import Resampler

__all__ = ["MultiViewUNet", "TimestepEmbedSequential", "check_state_dict", "load_unet_state_dict"]


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands each layer what it needs: ResBlocks get ``emb``, transformers get
    ``context`` and ``num_frames``, convs get only ``x`` (indices give the ``input_blocks.i.j`` keys)."""

    def forward(
        self,
        x: Tensor,  # [B*F, C, H, W]
        emb: Tensor,  # [B*F, time_embed_dim]
        context: Tensor,  # [B*F, T + ip_dim, context_dim]
        num_frames: int,
    ) -> Tensor:  # [B*F, C', H', W']
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


def _embed_mlp(dim_in: int, dim: int) -> nn.Sequential:
    """Linear -> SiLU -> Linear (keys ``0`` and ``2``), §2.1 step 2."""
    return nn.Sequential(nn.Linear(dim_in, dim), nn.SiLU(), nn.Linear(dim, dim))


class MultiViewUNet(nn.Module):
    """ImageDream's ``MultiViewUNetModel`` (reference §2) for any ``MultiViewUNetConfig``.

    Block layout (§2.2): ``input_blocks`` = stem conv, then per level ``num_res_blocks`` x
    [ResBlock (+ SpatialTransformer3D where the downsample factor is in
    ``attention_resolutions``)] and a Downsample between levels; ``middle_block`` =
    ResBlock, SpatialTransformer3D, ResBlock; ``output_blocks`` mirror the input blocks with
    ``num_res_blocks + 1`` ResBlocks per level, each fed ``cat([h, skip])``, and an Upsample
    closing every level but the last; ``out`` = GroupNorm, SiLU, conv.
    """

    def __init__(self, config: MultiViewUNetConfig | str | Mapping[str, Any] = "imagedream"):
        super().__init__()
        cfg = self.config = _as_config(config)
        mc, groups, drop = cfg.model_channels, cfg.norm_num_groups, cfg.dropout
        emb_dim = cfg.time_embed_dim

        def transformer(ch: int) -> SpatialTransformer3D:
            heads = ch // cfg.num_head_channels
            return SpatialTransformer3D(
                ch,
                heads,
                cfg.num_head_channels,
                cfg.context_dim,
                cfg.transformer_depth,
                cfg.ip_dim,
                cfg.ip_weight,
                groups,
                drop,
                cfg.position_encoding,
            )

        def res(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, ch_out, emb_dim, groups, drop)

        # Attribute order = state-dict order of the released checkpoint.
        if cfg.ip_dim > 0:
            self.image_embed = Resampler(
                dim=cfg.context_dim,
                depth=cfg.resampler_depth,
                dim_head=cfg.resampler_dim_head,
                heads=cfg.resampler_heads,
                num_queries=cfg.ip_dim,
                embedding_dim=cfg.ip_embed_dim,
                output_dim=cfg.context_dim,
                ff_mult=cfg.resampler_ff_mult,
            )
        self.time_embed = _embed_mlp(mc, emb_dim)
        if cfg.camera_dim > 0:
            self.camera_embed = _embed_mlp(cfg.camera_dim, emb_dim)

        stem_in = cfg.in_channels * (2 if cfg.concat_image else 1)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(stem_in, mc, 3, padding=1))])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), transformer(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch, eps=1e-5), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: MultiViewUNetConfig | str | Mapping[str, Any]) -> MultiViewUNet:
        """Build from a config object, a preset name or a ``config.json`` dict."""
        return cls(config)

    def load_state_dict_checked(self, state_dict: Mapping[str, Tensor], assign: bool = False) -> MultiViewUNet:
        """``load_unet_state_dict(self, state_dict)``: exact names/shapes or a ValueError."""
        load_unet_state_dict(self, state_dict, assign=assign)
        return self

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,  # [B*F, in_channels, H, W] noisy views, grouped (b f)
        timesteps: Tensor,  # [B*F] (or a scalar, broadcast to all rows)
        context: Tensor | None = None,  # [B*F, T, context_dim] text tokens; None = one zero token
        y: Tensor | None = None,  # class labels: not supported (ImageDream has num_classes=None)
        camera: Tensor | None = None,  # [B*F, camera_dim] flattened 4x4 cameras (image view: zeros)
        num_frames: int = 1,  # F, views per object including the image view
        ip: Tensor | None = None,  # [B*F, T_ip, ip_embed_dim] image-encoder tokens (uncond: zeros)
        ip_img: Tensor | None = None,  # [B, in_channels, H, W] clean input-image view (uncond: zeros)
    ) -> Tensor:  # [B*F, out_channels, H, W] predicted epsilon
        """Predict the noise of every view (reference §2.1).

        1. ``emb = time_embed(sinusoid(t)) + camera_embed(camera)`` (camera skipped if None).
        2. If ``ip_img`` is given, row ``F-1`` of each object (its last view) is replaced by
           ``ip_img`` — out of place, unlike the original, so the caller's ``x`` is untouched
           (§5 pitfall 8). Its output row is meaningless and should be ignored.
        3. ``context = cat([context, image_embed(ip)], 1)``: text tokens then ``ip_dim`` ip tokens.
        4. U-Net pass; every SpatialTransformer3D attends across the ``F`` views of an object.

        ``context=None`` stands for one all-zero text token, which contributes exactly nothing
        (zero keys and values, no biases) — handy for image-only teachers.
        """
        x, emb, context = self._prepare(x, timesteps, context, y, camera, num_frames, ip, ip_img)
        return self.out(self._unet_pass(x, emb, context, num_frames, len(self.output_blocks)))

    def forward_features(
        self,
        x: Tensor,  # [B*F, in_channels, H, W]
        timesteps: Tensor,  # [B*F] or scalar
        context: Tensor | None = None,
        camera: Tensor | None = None,  # [B*F, camera_dim]
        num_frames: int = 1,
        ip: Tensor | None = None,  # [B*F, T_ip, ip_embed_dim]
        ip_img: Tensor | None = None,  # [B, in_channels, H, W]
        num_output_blocks: int | None = None,  # run only the first k output blocks (None: all, before ``out``)
    ) -> Tensor:  # [B*F, C_k, H / s_k, W / s_k] hidden state after output block k
        """The U-Net's hidden features instead of its noise prediction (PEPD phase 1 reads these).

        Same inputs as :meth:`forward`. With ``num_output_blocks=k`` the decoder stops after its
        k-th block, i.e. at a coarser resolution (the student's pattern extractor truncates the
        teacher there; see ``dd3g_core.model``). The output head ``out`` is not applied.
        """
        k = len(self.output_blocks) if num_output_blocks is None else int(num_output_blocks)
        if not 0 <= k <= len(self.output_blocks):
            raise ValueError(f"num_output_blocks must be in [0, {len(self.output_blocks)}], got {k}")
        x, emb, context = self._prepare(x, timesteps, context, None, camera, num_frames, ip, ip_img)
        return self._unet_pass(x, emb, context, num_frames, k)

    def _unet_pass(self, x: Tensor, emb: Tensor, context: Tensor, num_frames: int, num_output_blocks: int) -> Tensor:
        hs = []
        hid = x
        for block in self.input_blocks:
            hid = block(hid, emb, context, num_frames)
            hs.append(hid)
        hid = self.middle_block(hid, emb, context, num_frames)
        for block in self.output_blocks[:num_output_blocks]:
            hid = block(torch.cat([hid, hs.pop()], dim=1), emb, context, num_frames)
        return hid

    def _prepare(self, x, timesteps, context, y, camera, num_frames, ip, ip_img) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 1-3 of :meth:`forward`: (x with the image view inserted, emb, context with ip tokens)."""
        cfg = self.config
        n, _, h, w = self._check_inputs(x, num_frames, y)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(n)
        if timesteps.shape != (n,):
            raise ValueError(f"timesteps must have shape [{n}] (one per row), got {list(timesteps.shape)}")
        if context is None:
            context = x.new_zeros(n, 1, cfg.context_dim)
        if context.ndim != 3 or context.shape[0] != n or context.shape[2] != cfg.context_dim:
            raise ValueError(f"context must be [{n}, T, {cfg.context_dim}], got {list(context.shape)}")

        emb = self.time_embed(timestep_embedding(timesteps, cfg.model_channels).to(x.dtype))
        if camera is not None:
            if cfg.camera_dim == 0:
                raise ValueError("camera given but this config has camera_dim=0")
            if camera.shape != (n, cfg.camera_dim):
                raise ValueError(f"camera must be [{n}, {cfg.camera_dim}], got {list(camera.shape)}")
            emb = emb + self.camera_embed(camera.to(x.dtype))

        if ip_img is not None:
            b = n // num_frames
            if ip_img.shape != (b, cfg.in_channels, h, w):
                raise ValueError(
                    f"ip_img must be [{b}, {cfg.in_channels}, {h}, {w}] (one per object), got {list(ip_img.shape)}"
                )
            views = x.reshape(b, num_frames, cfg.in_channels, h, w)
            x = torch.cat([views[:, :-1], ip_img.to(x.dtype)[:, None]], dim=1).reshape(n, cfg.in_channels, h, w)
        if cfg.concat_image:  # every view also sees the clean input image (zeros: no condition)
            img = ip_img.to(x.dtype).repeat_interleave(num_frames, dim=0) if ip_img is not None else torch.zeros_like(x)
            x = torch.cat([x, img], dim=1)

        if cfg.ip_dim > 0:
            if ip is None:
                raise ValueError(
                    "ip (image-encoder tokens) is required when ip_dim > 0; pass zeros for the unconditional branch"
                )
            if ip.ndim != 3 or ip.shape[0] != n or ip.shape[2] != cfg.ip_embed_dim:
                raise ValueError(f"ip must be [{n}, T_ip, {cfg.ip_embed_dim}], got {list(ip.shape)}")
            context = torch.cat([context, self.image_embed(ip.to(x.dtype)).to(context.dtype)], dim=1)
        elif ip is not None:
            raise ValueError("ip given but this config has ip_dim=0")
        return x, emb, context

    def _check_inputs(self, x: Tensor, num_frames: int, y: Tensor | None) -> tuple[int, int, int, int]:
        cfg = self.config
        if y is not None:
            raise ValueError("class-conditional input y is not supported (num_classes is None)")
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be [B*F, {cfg.in_channels}, H, W], got {list(x.shape)}")
        n, _, h, w = x.shape
        if num_frames < 1 or n % num_frames:
            raise ValueError(f"{n} rows are not a whole number of objects with num_frames={num_frames}")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if h % factor or w % factor:
            raise ValueError(f"H and W must be multiples of {factor} for {len(cfg.channel_mult)} levels, got {h}x{w}")
        return n, num_frames, h, w


def _as_config(config: MultiViewUNetConfig | str | Mapping[str, Any]) -> MultiViewUNetConfig:
    if isinstance(config, MultiViewUNetConfig):
        return config
    if isinstance(config, str):
        return MultiViewUNetConfig.preset(config)
    if isinstance(config, Mapping):
        return MultiViewUNetConfig.from_dict(config)
    raise TypeError(f"expected MultiViewUNetConfig, preset name or dict, got {type(config).__name__}")
