"""RGBA post-processing: quality filters, then recentre + square pad with a margin + resize.

Order (the stage follows it): :func:`check_quality` on the matted image at its generated
size (a cut-off object, an empty matte or a failed background removal is decided there, where
the frame edge is the generator's), then :func:`recentre`:

1. bbox of the pixels with alpha > ``bbox_alpha`` (default 0.1, so soft edges stay inside);
2. a square crop centred on the bbox centre whose side is ``max(w, h) / (1 - 2 margin)``, so
   the object's longer side spans ``(1 - 2 margin)`` of the output; regions outside the source
   are transparent;
3. resize to ``resolution`` on **premultiplied** colour (PIL's antialiased bilinear = a triangle
   filter widened on downscaling, per channel, in float), then un-premultiply. Transparent
   pixels carry no colour into the edges, and because the kernel is non-negative every output
   colour is a weighted mean of source colours: no dark, key-coloured or ringing fringes
   (bicubic/Lanczos lobes would overshoot where alpha is small).

:func:`filter_and_recentre` is that order, shared by every source (procedural, SDXL, the user's folder).

Filter results are structured: ``QualityResult(passed, reasons=[{"filter", "value", "limit"}],
stats)``; the reasons are what the manifest lists for rejected samples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from .config import QualityFilters, RGBASynthesisConfig
from .matting import MattingResult


@dataclass
class QualityResult:
    passed: bool
    reasons: list[dict] = field(default_factory=list)  # [{"filter", "value", "limit"}]
    stats: dict = field(default_factory=dict)  # coverage, bbox, pixel count, size

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def reason_names(self) -> list[str]:
        return [r["filter"] for r in self.reasons]


def _check_rgba(rgba: np.ndarray) -> np.ndarray:
    rgba = np.asarray(rgba)
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[-1] != 4:
        raise ValueError(f"expected a uint8 [H, W, 4] image, got {rgba.dtype} {rgba.shape}")
    return rgba


def alpha_bbox(alpha: np.ndarray, threshold: float) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), half-open, of ``alpha > threshold`` (alpha in 0..1), or None if empty."""
    mask = alpha > threshold
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def check_quality(rgba: np.ndarray, filters: QualityFilters | None = None) -> QualityResult:
    """Apply ``filters`` (default ``QualityFilters()``) to a matted image (see :class:`~.config.QualityFilters`)."""
    filters = QualityFilters() if filters is None else filters
    rgba = _check_rgba(rgba)
    H, W = rgba.shape[:2]
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    mask = alpha > filters.alpha_threshold
    pixels = int(mask.sum())
    coverage = pixels / float(H * W)
    bbox = alpha_bbox(alpha, filters.alpha_threshold)
    stats = {"size": [W, H], "object_pixels": pixels, "coverage": coverage, "bbox": list(bbox) if bbox else None}
    reasons = []
    if pixels < filters.min_pixels:
        reasons.append({"filter": "empty", "value": pixels, "limit": filters.min_pixels})
        return QualityResult(False, reasons, stats)
    if coverage < filters.min_coverage:
        reasons.append({"filter": "coverage_low", "value": round(coverage, 5), "limit": filters.min_coverage})
    if coverage > filters.max_coverage:
        reasons.append({"filter": "coverage_high", "value": round(coverage, 5), "limit": filters.max_coverage})
    if filters.reject_border_touch:
        x0, y0, x1, y1 = bbox
        gap = min(x0, y0, W - x1, H - y1)
        stats["border_gap"] = gap
        if gap < filters.border_px:
            reasons.append({"filter": "touches_border", "value": gap, "limit": filters.border_px})
    return QualityResult(not reasons, reasons, stats)


def _resize_channels(x: np.ndarray, size: int) -> np.ndarray:  # float32 [h, w, C] -> [size, size, C]
    if x.shape[0] == size and x.shape[1] == size:
        return x.copy()
    out = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(x[..., c], dtype=np.float32)).resize(
                (size, size), Image.Resampling.BILINEAR
            )
        )
        for c in range(x.shape[-1])
    ]
    return np.stack(out, axis=-1)


def recentre(
    rgba: np.ndarray,
    resolution: int,
    margin: float = 0.1,
    bbox_alpha: float = 0.1,
) -> tuple[np.ndarray, dict]:
    """Square, centred, margin-padded, resized copy of ``rgba`` and what was done (json).

    Raises ``ValueError`` for an empty alpha (filter first)."""
    rgba = _check_rgba(rgba)
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    bbox = alpha_bbox(alpha, bbox_alpha)
    if bbox is None:
        raise ValueError("cannot recentre an image with no opaque pixels")
    x0, y0, x1, y1 = bbox
    side = max(1, math.ceil(max(x1 - x0, y1 - y0) / (1.0 - 2.0 * margin)))
    cx2, cy2 = x0 + x1, y0 + y1  # twice the bbox centre: integer
    left, top = (cx2 - side) // 2, (cy2 - side) // 2  # crop origin in source pixels (may be < 0)
    # premultiplied float canvas of the crop; outside the source is transparent
    a = alpha[..., None]
    premul = np.concatenate([rgba[..., :3].astype(np.float32) / 255.0 * a, a], axis=-1)
    canvas = np.zeros((side, side, 4), np.float32)
    H, W = alpha.shape
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + side, W), min(top + side, H)
    canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = premul[sy0:sy1, sx0:sx1]
    out = np.clip(_resize_channels(canvas, resolution), 0.0, 1.0)
    a_out = out[..., 3:]
    straight = np.where(a_out > 1e-4, out[..., :3] / np.maximum(a_out, 1e-4), 0.0).clip(0.0, 1.0)
    a8 = np.clip(np.rint(a_out * 255.0), 0, 255).astype(np.uint8)
    rgb8 = np.where(a8 > 0, np.clip(np.rint(straight * 255.0), 0, 255), 0).astype(np.uint8)
    result = np.concatenate([rgb8, a8], axis=-1)
    record = {
        "source_bbox": [x0, y0, x1, y1],
        "crop": [left, top, side],
        "scale": resolution / side,
        "margin": margin,
        "bbox_alpha": bbox_alpha,
    }
    return result, record


def final_stats(rgba: np.ndarray, alpha_threshold: float = 0.5) -> dict:
    """Coverage and bbox of a finished sample (what the shard json records)."""
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    bbox = alpha_bbox(alpha, alpha_threshold)
    return {"alpha_coverage": float((alpha > alpha_threshold).mean()), "bbox": list(bbox) if bbox else None}


def filter_and_recentre(
    config: RGBASynthesisConfig, matted: MattingResult, record: dict
) -> tuple[dict | None, list[dict], dict]:
    """The quality filters on a matted image, then, if it passed, recentring: ``(sample or None, reasons,
    filter stats)``. ``record`` (the sample's json, with its ``key``) gets what was measured and done.
    Every source goes through here: procedural, SDXL and the user's own images filter alike."""
    quality = check_quality(matted.rgba, config.filters)
    reasons = list(quality.reasons)
    if matted.info.get("background_plain") is False:
        reasons.append(
            {
                "filter": "background_not_plain",
                "value": round(float(matted.info.get("background_border_share") or 0.0), 4),
                "limit": 0.5,
            }
        )
    record["filters"] = {"passed": not reasons, "reasons": reasons, "stats": quality.stats}
    record["source_alpha_coverage"] = quality.stats["coverage"]
    if reasons:
        return None, reasons, quality.stats
    rgba, post = recentre(matted.rgba, config.resolution, config.margin)
    record["postprocess"] = post
    record.update(final_stats(rgba, config.filters.alpha_threshold))
    return {"__key__": record["key"], "rgba.png": rgba, "json": record}, reasons, quality.stats
