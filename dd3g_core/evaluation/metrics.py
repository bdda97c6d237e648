"""Image metrics shared by the evaluation and the benchmarks (views as ``[B, V, 3, H, W]`` in [0, 1])."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["psnr", "ssim"]


def psnr(pred: Tensor, gt: Tensor) -> Tensor:  # [B, V, 3, H, W] x2 -> [B, V] dB (data range 1)
    mse = (pred.clamp(0, 1) - gt).pow(2).flatten(2).mean(-1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def ssim(pred: Tensor, gt: Tensor) -> Tensor:  # [B, V, 3, H, W] x2 -> [B, V]
    """torchmetrics SSIM per image: Gaussian window 11, sigma 1.5, data range 1."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    b, v = pred.shape[:2]
    s = ssim_fn(
        pred.clamp(0, 1).flatten(0, 1).double(),
        gt.flatten(0, 1).double(),
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        data_range=1.0,
        reduction="none",
    )
    return s.float().reshape(b, v)
