"""Input-image preparation shared by the teachers, the student and evaluation.

Shapes: images ``[B, 4|3|2|1, H, W]`` RGBA / RGB / gray+alpha / gray, float in [0, 1] or uint8.
RGBA is straight alpha and is composited on a background colour; RGB is taken as already
composited; gray is repeated to RGB. Only square images are accepted (recentring and padding
are the ``rgba_images`` stage's job).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["composite_rgb", "resize_square", "prepare_images"]


def composite_rgb(
    images: Tensor,  # [B, 4|3|2|1, H, W] float in [0, 1] or uint8
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> Tensor:  # [B, 3, H, W] float32 in [0, 1]
    """Convert any supported mode to RGB on ``background`` (straight alpha: rgb*a + bg*(1-a))."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.ndim != 4:
        hint = "; add a batch dimension with images[None]" if images.ndim == 3 else ""
        raise ValueError(f"images must be [B, C, H, W], got shape {list(images.shape)}{hint}")
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
    elif images.is_floating_point():
        x = images.float()
        if x.numel() and (not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise ValueError(
                f"float images must lie in [0, 1], got range [{x.min().item():.3g}, "
                f"{x.max().item():.3g}] (0..255 data? pass it as uint8)"
            )
        x = x.clamp(0.0, 1.0)
    else:
        raise TypeError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
    c = x.shape[1]
    if c not in (1, 2, 3, 4):
        hint = " (channels-last? use images.permute(0, 3, 1, 2))" if x.shape[-1] in (1, 2, 3, 4) else ""
        raise ValueError(f"images need 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels in dim 1, got {c}{hint}")
    rgb = x[:, :3] if c >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    if c in (2, 4):
        alpha = x[:, -1:]
        bg = torch.as_tensor(background, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
        rgb = rgb * alpha + bg * (1.0 - alpha)
    return rgb.contiguous()


def resize_square(
    x: Tensor,  # [N, C, H, W] with H == W
    resolution: int,
) -> Tensor:  # [N, C, resolution, resolution]
    """Bilinear resize with antialiasing (no-op at the right size); non-square input is rejected."""
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(
            f"teacher input images must be square (recentre/pad them first, as the rgba_images stage does), got {h}x{w}"
        )
    if h == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)


def prepare_images(
    images: Tensor,  # [B, 4|3|2|1, H, W]
    resolution: int,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> Tensor:  # [B, 3, resolution, resolution] float32 in [0, 1]
    """``composite_rgb`` then ``resize_square`` (composite first, so edges blend with the background)."""
    return resize_square(composite_rgb(images, background), resolution).clamp(0.0, 1.0)
