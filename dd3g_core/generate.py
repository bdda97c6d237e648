"""``dd3g generate``: an image (plus noise draws) -> 3D Gaussians with a trained PEPD.

Recipe, per input image:

1. load it (any mode; corrupt, empty or bomb images are refused by ``load_image_rgba``);
2. background removal if it has no alpha: colour-key matting when the backdrop is plain, else
   rembg with a local model (``--rembg-model`` / ``DD3G_REMBG_MODEL``); an image with (almost)
   nothing in it is rejected;
3. recentre + square pad with the ``rgba_images`` stage's margin, at its resolution;
4. per noise draw: N from an explicit seed (``teacher.draw_noise``; ``--interpolate`` slerps
   between the N of two seeds), one PEPD forward;
5. write ``<name>_s<seed>.ply`` (standard 3DGS layout), a turntable GIF and a views grid PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .gaussians import Gaussians

__all__ = ["prepare_image", "slerp", "Generator", "EmptyImageError", "MIN_COVERAGE"]

REMBG_ENV = "DD3G_REMBG_MODEL"
MIN_COVERAGE = 0.002  # share of opaque pixels below which an image counts as empty
Matting = Literal["auto", "colorkey", "rembg", "none"]


class EmptyImageError(ValueError):
    """The image (after background removal) has nothing in it."""


def prepare_image(
    src: str | os.PathLike | bytes | np.ndarray,
    resolution: int = 64,
    margin: float = 0.1,
    matting: Matting = "auto",
    rembg_model: str | None = None,
) -> tuple[np.ndarray, dict]:  # uint8 [resolution, resolution, 4], record
    """Steps 1-3 of the recipe: a centred, square, straight-alpha RGBA image and what was done."""
    from .synthesis.image_io import load_image_rgba
    from .synthesis.matting import ColorKeyMatting, RembgMatting
    from .synthesis.postprocess import recentre

    if matting not in ("auto", "colorkey", "rembg", "none"):
        raise ValueError(f"matting must be auto, colorkey, rembg or none, got {matting!r}")
    if isinstance(src, np.ndarray):
        rgba, had_alpha = np.ascontiguousarray(src, dtype=np.uint8), src.shape[-1] == 4
        if rgba.ndim != 3 or rgba.shape[-1] not in (3, 4):
            raise ValueError(f"image array must be [H, W, 3|4] uint8, got {src.shape}")
        if not had_alpha:
            rgba = np.concatenate([rgba, np.full(rgba.shape[:2] + (1,), 255, np.uint8)], -1)
    else:
        rgba, info = load_image_rgba(src, return_info=True)
        had_alpha = info.had_alpha
    record: dict = {"had_alpha": bool(had_alpha), "source_size": list(rgba.shape[:2])}
    if had_alpha and (rgba[..., 3] < 255).any():
        record["matting"] = "input alpha"
    elif matting == "none":
        record["matting"] = "none (opaque)"
    else:
        rgb = rgba[..., :3]
        method = matting
        if matting in ("auto", "colorkey"):
            res = ColorKeyMatting().matte(rgb)
            plain = bool(res.info.get("background_plain", True))
            if plain or matting == "colorkey":
                rgba, method = res.rgba, "colorkey"
                record["matting_info"] = {k: v for k, v in res.info.items() if isinstance(v, (bool, int, float, str))}
            else:
                method = "rembg"
        if method == "rembg":
            model = rembg_model or os.environ.get(REMBG_ENV)
            if not model:
                raise ValueError(
                    "the image has no alpha and its background is not a plain colour: background "
                    f"removal needs rembg with a local model (--rembg-model PATH or {REMBG_ENV}); "
                    "or pass an RGBA image"
                )
            rgba = RembgMatting(model).matte(rgb).rgba
        record["matting"] = method
    coverage = float((rgba[..., 3] >= 128).mean())
    record["coverage"] = coverage
    if coverage < MIN_COVERAGE:
        raise EmptyImageError(
            f"the image has nothing in it: {coverage:.2%} of its pixels are opaque after "
            f"background removal (need >= {MIN_COVERAGE:.1%})"
        )
    out, rec = recentre(rgba, resolution, margin)
    record["recentre"] = rec
    return out, record


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation of two Gaussian noise tensors (keeps the norm of a typical draw)."""
    af, bf = a.flatten().double(), b.flatten().double()
    cos = torch.dot(af, bf) / (af.norm() * bf.norm())
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return ((1 - t) * a.double() + t * b.double()).to(a.dtype)
    so = torch.sin(omega)
    return ((torch.sin((1 - t) * omega) / so) * a.double() + (torch.sin(t * omega) / so) * b.double()).to(a.dtype)


@dataclass
class Generator:
    """A PEPD student with its teacher's condition encoder and cameras."""

    model: object  # PEPD
    teacher: object  # MultiViewTeacher (encoders, layout)

    @classmethod
    def load(
        cls, checkpoint: str | os.PathLike, teacher: str | os.PathLike | None = None, device: str | None = None
    ) -> Generator:
        from .model import PEPD
        from .teacher.loading import load_teacher

        model = PEPD.from_pretrained(checkpoint, device=device)
        t = load_teacher(teacher, device=device)
        if t.latent_resolution != model.config.latent_resolution or t.num_views != model.config.num_views:
            raise ValueError(
                f"teacher {teacher or 'tiny'} (latent {t.latent_resolution}, {t.num_views} views) does "
                f"not match the student (latent {model.config.latent_resolution}, "
                f"{model.config.num_views} views): pass the teacher it was distilled from"
            )
        return cls(model, t)

    def noise(self, seed: int) -> Tensor:  # [1, V+1, C, h, w]
        return self.teacher.draw_noise(1, int(seed))

    @torch.no_grad()
    def __call__(self, rgba: np.ndarray, noise: Tensor) -> Gaussians:  # unbatched Gaussians [N]
        image = torch.from_numpy(np.ascontiguousarray(rgba)).permute(2, 0, 1)[None]
        cams = self.teacher.cameras()
        cond = self.teacher.encode_condition(image)
        out = self.model(noise, cams.embedding, cond, image, cams.viewmats, cams.Ks, cams.resolution)
        g = out.gaussians
        return Gaussians(g.means[0], g.quats[0], g.log_scales[0], g.opacity_logits[0], g.sh[0])


def write_sample(
    g: Gaussians,
    out_dir: Path,
    stem: str,
    resolution: int = 128,
    frames: int = 36,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    turntable_ext: str = ".gif",
) -> dict[str, str]:
    from .exports import save_turntable, save_views_grid
    from .ply import save_ply

    paths = {
        "ply": out_dir / f"{stem}.ply",
        "turntable": out_dir / f"{stem}{turntable_ext}",
        "views": out_dir / f"{stem}_views.png",
    }
    save_ply(g, paths["ply"])
    save_turntable(
        g, paths["turntable"], num_frames=frames, elevation_deg=15.0, resolution=resolution, background=background
    )
    save_views_grid(
        g,
        paths["views"],
        azimuths=(0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0),
        elevation_deg=15.0,
        resolution=resolution,
        background=background,
        ncols=4,
    )
    return {k: str(v) for k, v in paths.items()}


def write_summary(out_dir: Path, summary: dict) -> Path:
    from .io import atomic_write_json

    path = out_dir / "generate.json"
    atomic_write_json(path, summary)
    return path
