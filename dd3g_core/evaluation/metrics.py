"""Image metrics of the evaluation and the benchmarks (views as ``[B, V, 3, H, W]`` in [0, 1]).

Every function returns one value per image (``[B, V]``), so a caller can report non-finite
objects one by one instead of averaging them away.

* :func:`psnr`, :func:`ssim` (torchmetrics, Gaussian window 11, sigma 1.5), :class:`Lpips` (VGG16
  LPIPS from local weights only: without its learned ``lin*`` weights it is not LPIPS, and the
  evaluation reports it as unavailable rather than a look-alike number);
* :func:`foreground_iou`: silhouettes thresholded at alpha 0.5;
* :func:`fog`: what a render shows *around* the object, in a band of ``band_px`` pixels outside
  the ground truth's silhouette where the ground truth is empty: the mean alpha there, and the
  mean brightness of the render composited on black there (white fog that hides on a white
  background shows on black); ``outside_*`` over the whole band (silhouette errors count), ``fog_*``
  only away from the render's own solid part (haze).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "foreground_iou", "fog", "fog_band", "Lpips", "lpips_or_none"]

EMPTY_ALPHA = 1.0 / 255.0  # ground-truth alpha below this is "nothing there"


def psnr(pred: Tensor, gt: Tensor) -> Tensor:  # [B, V, 3, H, W] x2 -> [B, V] dB (data range 1)
    mse = (pred.clamp(0, 1) - gt).pow(2).flatten(2).mean(-1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def ssim(pred: Tensor, gt: Tensor) -> Tensor:  # [B, V, 3, H, W] x2 -> [B, V]
    """torchmetrics SSIM per image: Gaussian window 11, sigma 1.5, data range 1. In float32: the
    depthwise convolution in float64 is ~25x slower on CPU (no vectorised kernel) for differences
    in the 5th decimal."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    b, v = pred.shape[:2]
    s = ssim_fn(
        pred.clamp(0, 1).flatten(0, 1).float(),
        gt.flatten(0, 1).float(),
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        data_range=1.0,
        reduction="none",
    )
    return s.float().reshape(b, v)


def foreground_iou(alpha: Tensor, gt_alpha: Tensor, threshold: float = 0.5) -> Tensor:
    """[B, V, 1, H, W] x2 -> [B, V]: IoU of the silhouettes (1 when both are empty)."""
    a, g = alpha > threshold, gt_alpha > threshold
    inter = (a & g).flatten(2).sum(-1).float()
    union = (a | g).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def fog_band(gt_alpha: Tensor, band_px: int) -> Tensor:  # [B, V, 1, H, W] -> bool, same shape
    """Pixels within ``band_px`` of the ground truth's silhouette where the ground truth is empty."""
    b, v = gt_alpha.shape[:2]
    occupied = (gt_alpha > EMPTY_ALPHA).float().flatten(0, 1)
    near = F.max_pool2d(occupied, 2 * band_px + 1, stride=1, padding=band_px) > 0
    return (near & (occupied == 0)).reshape(gt_alpha.shape)


def fog(
    alpha: Tensor,  # [B, V, 1, H, W]
    premultiplied: Tensor,  # [B, V, 3, H, W] the render on black
    gt_alpha: Tensor,  # [B, V, 1, H, W]
    band_px: int,
    margin_px: int = 1,  # one pixel of the resolution the object was learned at (4 at 128 px for a 32 px teacher)
) -> dict[str, Tensor]:  # each [B, V]: fog_alpha, fog_black, outside_alpha, outside_black
    """Haze around the object, and everything outside the ground truth's silhouette.

    * ``outside_alpha`` / ``outside_black``: mean alpha / brightness on black over the band of
      ``band_px`` pixels around the ground truth's silhouette where the ground truth is empty. A solid
      object whose silhouette is one pixel too wide scores here as much as haze does; so does the
      teacher: its own unseen views, matted, score 0.16-0.19 at 32 px (``docs/experiments/solid_student.md``).
    * ``fog_alpha`` / ``fog_black``: the same band, but only the pixels farther than ``margin_px`` from
      the render's own solid part (alpha >= 0.5). That is haze, whatever the silhouette: faint
      Gaussians around and between solid ones. A render that is nowhere solid is all haze. The
      teacher's matted views score 0 here.
    """
    band = fog_band(gt_alpha, band_px)
    brightness = premultiplied.mean(2, keepdim=True)  # on black the colour is the premultiplied one
    solid = (alpha >= 0.5).float().flatten(0, 1)
    near_solid = (F.max_pool2d(solid, 2 * margin_px + 1, stride=1, padding=margin_px) > 0).reshape(alpha.shape)
    out = {}
    for name, region in (("outside", band), ("fog", band & ~near_solid)):
        n = region.flatten(2).sum(-1).clamp_min(1).float()
        out[f"{name}_alpha"] = (alpha * region).flatten(2).sum(-1) / n
        out[f"{name}_black"] = (brightness * region).flatten(2).sum(-1) / n
    return out


class Lpips:
    """LPIPS (VGG16 variant, Zhang et al. 2018) from a local safetensors file with torchvision's VGG16
    ``features.*`` and LPIPS's ``lin0..4.weight``; see :mod:`dd3g_core.distill.perceptual`."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        from safetensors import safe_open

        from ..distill.perceptual import PerceptualLoss

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
        missing = [f"lin{k}.weight" for k in range(5) if f"lin{k}.weight" not in keys]
        if missing:
            raise ValueError(
                f"{path} has VGG16 features but not LPIPS's learned weights {missing}: without them the distance "
                f"is not LPIPS (add them from the lpips package's vgg.pth, converted to safetensors)"
            )
        self.net = PerceptualLoss.from_file(path).to(device).eval()
        self.name = f"LPIPS-VGG16 ({path.name})"

    @torch.no_grad()
    def __call__(self, pred: Tensor, gt: Tensor) -> Tensor:  # [B, V, 3, H, W] x2 -> [B, V]
        b, v = pred.shape[:2]
        dev = next(self.net.parameters()).device
        d = self.net.distance(pred.flatten(0, 1).clamp(0, 1).to(dev), gt.flatten(0, 1).to(dev))
        return d.float().cpu().reshape(b, v)


def lpips_or_none(path: str | None, device: str | torch.device = "cpu") -> tuple[Lpips | None, str]:
    """(the metric, its name) or (None, why it is unavailable)."""
    if not path:
        return None, "unavailable: no local LPIPS weights (evaluation.lpips_weights)"
    if not Path(path).is_file():
        return None, f"unavailable: {path} does not exist"
    metric = Lpips(path, device)
    return metric, metric.name
