"""Background removal: RGB object image -> straight-alpha RGBA.

Interface: ``matte(rgb uint8 [H, W, 3]) -> MattingResult(rgba uint8 [H, W, 4], info dict)``.

* :class:`ColorKeyMatting` (tiny profile) — the image is an object on a *plain* backdrop.
  1. Background colour ``B``: per-channel median of a ``border``-pixel frame around the image;
     ``info["background_plain"]`` is False when fewer than half of those pixels lie within
     ``low`` of it (the stage rejects such images: ``background_not_plain``).
  2. Distance ``d = |C - B|`` (RGB, 0..255). ``d >= high`` is *sure foreground*; ``d <= low`` is
     background (alpha 0). Between them a linear soft ramp is the fallback alpha.
  3. Refinement near the object: with the compositing model ``C = a F + (1 - a) B``, the
     foreground colour ``F`` of an edge pixel is taken from the nearest *interior* sure pixel
     (sure foreground eroded by one pixel, so ``F`` is not itself a mixed edge pixel; thin parts
     that vanish under erosion use the nearest sure pixel), and ``a`` is the projection
     ``<C - B, F - B> / |F - B|^2``, clipped to [0, 1], where that model explains the pixel
     (residual below ``max(low, 0.2 d)``; otherwise, e.g. at a stripe edge, the ramp is kept).
     This recovers fractional edge alpha whatever the object's distance to the key (a fixed
     ramp cannot).
  4. Despill (``despill=True``): straight colour ``(C - (1 - a) B) / a`` where ``a >= 0.25``, the
     ``F`` estimate below that, so no key colour bleeds into the edges. Without despill the
     RGB is the observed (spilled) colour.
  Deterministic: no randomness, no iteration-order dependence.
* :class:`RembgMatting` (full profile) — ``rembg.new_session("u2net_custom", model_path=P)`` with
  ``P`` a local ``.onnx`` file. rembg only accepts model paths inside its home directory, so the
  session is created with ``U2NET_HOME`` / ``REMBG_HOME`` pointing at ``P``'s folder (restored
  afterwards). ``u2net_custom`` never downloads; a missing file is a :class:`MissingModelError`.
  The predicted mask is the alpha; the colours are unmixed against the border colour (as above)
  when ``despill`` is on and the backdrop is plain (SDXL is prompted for a white one).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import MissingModelError, check_rembg_model


@dataclass
class MattingResult:
    rgba: np.ndarray  # uint8 [H, W, 4], straight alpha; RGB is 0 where alpha is 0
    info: dict = field(default_factory=dict)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"matting takes a uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}")
    if min(rgb.shape[:2]) < 4:
        raise ValueError(f"image of {rgb.shape[1]}x{rgb.shape[0]} is too small to matte")
    return rgb


def border_pixels(img: np.ndarray, width: int = 2) -> np.ndarray:  # [M, C]
    w = max(1, min(width, min(img.shape[:2]) // 4))
    return np.concatenate(
        [
            img[:w].reshape(-1, img.shape[-1]),
            img[-w:].reshape(-1, img.shape[-1]),
            img[w:-w, :w].reshape(-1, img.shape[-1]),
            img[w:-w, -w:].reshape(-1, img.shape[-1]),
        ]
    )


def estimate_background(rgb: np.ndarray, width: int = 2, tolerance: float = 16.0) -> tuple[np.ndarray, float]:
    """(median border colour [3] float, share of border pixels within ``tolerance`` of it)."""
    ring = border_pixels(rgb, width).astype(np.float32)
    bg = np.median(ring, axis=0)
    share = float((np.linalg.norm(ring - bg, axis=-1) <= tolerance).mean())
    return bg, share


def unmix_foreground(
    rgb: np.ndarray,
    alpha: np.ndarray,
    background: np.ndarray,
    fallback: np.ndarray | None = None,
    min_alpha: float = 0.25,
) -> np.ndarray:
    """Straight colour from ``C = a F + (1 - a) B``; ``fallback`` (or C) where ``a < min_alpha``."""
    C = rgb.astype(np.float32)
    a = alpha[..., None].astype(np.float32)
    F = (C - (1.0 - a) * background.reshape(1, 1, 3)) / np.maximum(a, 1e-6)
    low = fallback if fallback is not None else C
    return np.clip(np.where(a >= min_alpha, F, low), 0.0, 255.0)


def to_rgba8(straight: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a8 = np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
    rgb8 = np.where(a8[..., None] > 0, np.clip(np.rint(straight), 0, 255), 0).astype(np.uint8)
    return np.concatenate([rgb8, a8[..., None]], axis=-1)


class ColorKeyMatting:
    name = "colorkey"

    def __init__(
        self, low: float = 16.0, high: float = 64.0, border: int = 2, refine_radius: float = 3.0, despill: bool = True
    ):
        if not 0.0 <= low < high:
            raise ValueError("need 0 <= low < high")
        self.low, self.high, self.border = float(low), float(high), int(border)
        self.refine_radius, self.despill = float(refine_radius), bool(despill)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "low": self.low,
            "high": self.high,
            "border": self.border,
            "refine_radius": self.refine_radius,
            "despill": self.despill,
        }

    def alpha(self, rgb: np.ndarray, background: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """float32 alpha [H, W] in 0..1 and the estimate's info (see module docstring)."""
        alpha, info, _ = self._estimate(rgb, background)
        return alpha, info

    def _estimate(self, rgb, background=None) -> tuple[np.ndarray, dict, np.ndarray | None]:
        """(alpha, info, per-pixel foreground colour estimate F or None)."""
        from scipy import ndimage

        rgb = _check_rgb(rgb)
        share = None
        if background is None:
            background, share = estimate_background(rgb, self.border, self.low)
        B = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        C = rgb.astype(np.float32)
        D = C - B
        d = np.linalg.norm(D, axis=-1)
        ramp = np.clip((d - self.low) / (self.high - self.low), 0.0, 1.0)
        sure = d >= self.high
        info = {
            "background_rgb": [round(float(v), 2) for v in B.reshape(3)],
            "background_plain": None if share is None else bool(share >= 0.5),
            "background_border_share": share,
        }
        if not sure.any():
            return ramp.astype(np.float32), info, None
        interior = ndimage.binary_erosion(sure, structure=np.ones((3, 3), bool))
        dist_s, idx_s = ndimage.distance_transform_edt(~sure, return_indices=True)
        F = C[idx_s[0], idx_s[1]]
        if interior.any():
            dist_i, idx_i = ndimage.distance_transform_edt(~interior, return_indices=True)
            use_i = dist_i <= self.refine_radius + 1.0
            F = np.where(use_i[..., None], C[idx_i[0], idx_i[1]], F)
        FB = F - B
        fb2 = (FB * FB).sum(-1)
        proj = np.clip((D * FB).sum(-1) / np.maximum(fb2, 1e-6), 0.0, 1.0)
        # the compositing model must explain the pixel: a sure pixel of *another* colour than its
        # reference (a stripe edge) is not a mixture with the key, it is simply foreground
        resid = np.linalg.norm(D - proj[..., None] * FB, axis=-1)
        explained = resid <= np.maximum(self.low, 0.2 * d)
        near = (dist_s <= self.refine_radius) & (fb2 >= self.high**2) & explained
        alpha = np.where(near, proj, ramp)
        alpha = np.where(d <= self.low, 0.0, alpha)
        return alpha.astype(np.float32), info, F

    def matte(self, rgb: np.ndarray) -> MattingResult:
        alpha, info, F = self._estimate(rgb)
        B = np.asarray(info["background_rgb"], dtype=np.float32)
        if self.despill:
            straight = unmix_foreground(rgb, alpha, B, fallback=F)
        else:
            straight = rgb.astype(np.float32)
        return MattingResult(to_rgba8(straight, alpha), info)


@contextlib.contextmanager
def _rembg_home(directory: Path):
    """rembg accepts custom model paths only under its home dir: point both variables there."""
    saved = {k: os.environ.get(k) for k in ("U2NET_HOME", "REMBG_HOME")}
    os.environ["U2NET_HOME"] = os.environ["REMBG_HOME"] = str(directory)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RembgMatting:
    name = "rembg"

    def __init__(
        self,
        model_path: str | os.PathLike,
        model_name: str = "u2net_custom",
        despill: bool = True,
        border: int = 2,
        plain_tolerance: float = 16.0,
    ):
        path = check_rembg_model(model_path).resolve()
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("rembg") is None:
            # plain `rembg` without onnxruntime calls sys.exit(1) on import: check first
            raise ImportError(
                'rembg matting needs rembg with an onnxruntime backend: pip install "rembg[cpu]" (or "rembg[gpu]")'
            )
        from rembg import new_session

        self.model_path, self.model_name, self.despill = path, model_name, bool(despill)
        self.border, self.plain_tolerance = int(border), float(plain_tolerance)
        with _rembg_home(path.parent):
            try:
                self.session = new_session(model_name, model_path=str(path))
            except Exception as e:  # onnxruntime's errors do not name the file
                raise MissingModelError(f"could not load rembg model {path} as {model_name!r}: {e}") from e

    def describe(self) -> dict:
        return {"name": self.name, "session": self.model_name, "model": self.model_path.name, "despill": self.despill}

    def matte(self, rgb: np.ndarray) -> MattingResult:
        from PIL import Image

        rgb = _check_rgb(rgb)
        masks = self.session.predict(Image.fromarray(rgb))
        mask = np.asarray(masks[0].convert("L").resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.BILINEAR))
        alpha = mask.astype(np.float32) / 255.0
        bg, share = estimate_background(rgb, self.border, self.plain_tolerance)
        info = {
            "background_rgb": [round(float(v), 2) for v in bg],
            "background_border_share": share,
            "background_plain": bool(share >= 0.5),
        }
        if self.despill and info["background_plain"]:
            straight = unmix_foreground(rgb, alpha, bg)
        else:
            straight = rgb.astype(np.float32)
        return MattingResult(to_rgba8(straight, alpha), info)
