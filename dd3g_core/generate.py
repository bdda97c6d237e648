"""``dd3g generate``: an image (plus noise draws) -> 3D Gaussians with a trained PEPD.

Recipe, per input image:

1. load it (any mode; corrupt, empty or bomb images are refused by ``load_image_rgba``); an image
   whose longer side exceeds ``MAX_WORKING_SIDE`` (2048 px) is box-filtered down to it while it
   is decoded, before any full-resolution work, so matting and recentring run on at most
   2048 x 2048 pixels (peak memory stays ~0.5 GB for the largest image the pixel limit admits);
   images within 2048 px are processed exactly as before;
2. background removal if it has no alpha: colour-key matting when the backdrop is plain, else
   rembg with a local model (``--rembg-model`` / ``DD3G_REMBG_MODEL``); an image with (almost)
   nothing in it is rejected;
3. recentre + square pad with the ``rgba_images`` stage's margin, at its resolution;
4. per noise draw: N from an explicit seed (``teacher.draw_noise``; ``--interpolate`` slerps
   between the N of two seeds), one PEPD forward;
5. write ``<name>_s<seed>.ply`` (standard 3DGS layout), a turntable GIF and a views grid PNG.

Output names never collide (:func:`claim_output_names`): ``<name>`` is the input's file stem,
unless another input already owns that stem in the output folder (``a/x.png`` and ``b/x.png``,
in one call or two), then ``<stem>-2``, ``<stem>-3``, ...; ``generate.json`` maps every name to
its source image (``outputs``) and keeps every input's record across calls.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .gaussians import Gaussians

__all__ = [
    "prepare_image",
    "slerp",
    "Generator",
    "EmptyImageError",
    "MIN_COVERAGE",
    "MAX_WORKING_SIDE",
    "MAX_INPUT_RESOLUTION",
    "claim_output_names",
    "write_summary",
]

REMBG_ENV = "DD3G_REMBG_MODEL"
MIN_COVERAGE = 0.002  # share of opaque pixels below which an image counts as empty
MAX_WORKING_SIDE = 2048  # longer side (px) an input is reduced to before matting and recentring
MAX_INPUT_RESOLUTION = 1024  # the largest recentred input size (``resolution`` / --input-resolution)
SUMMARY_NAME = "generate.json"
Matting = Literal["auto", "colorkey", "rembg", "none"]


class EmptyImageError(ValueError):
    """The image (after background removal) has nothing in it."""


def prepare_image(
    src: str | os.PathLike | bytes | np.ndarray,
    resolution: int = 64,
    margin: float = 0.1,
    matting: Matting = "auto",
    rembg_model: str | None = None,
    max_side: int = MAX_WORKING_SIDE,
) -> tuple[np.ndarray, dict]:  # uint8 [resolution, resolution, 4], record
    """Steps 1-3 of the recipe: a centred, square, straight-alpha RGBA image and what was done.

    An input whose longer side exceeds ``max_side`` is reduced to it first (``record["working_size"]``)."""
    from .synthesis.image_io import downscale_rgba, load_image_rgba
    from .synthesis.matting import ColorKeyMatting, RembgMatting
    from .synthesis.postprocess import recentre

    if matting not in ("auto", "colorkey", "rembg", "none"):
        raise ValueError(f"matting must be auto, colorkey, rembg or none, got {matting!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
        raise ValueError(f"resolution must be an integer in 1..{MAX_INPUT_RESOLUTION}, got {resolution!r}")
    if not 1 <= resolution <= MAX_INPUT_RESOLUTION:
        raise ValueError(f"resolution must be in 1..{MAX_INPUT_RESOLUTION}, got {resolution}")
    if isinstance(src, np.ndarray):
        if src.ndim != 3 or src.shape[-1] not in (3, 4):
            raise ValueError(f"image array must be [H, W, 3|4] uint8, got {src.shape}")
        had_alpha, source_size = src.shape[-1] == 4, list(src.shape[:2])
        rgba = src if had_alpha else np.concatenate([src, np.full(src.shape[:2] + (1,), 255, np.uint8)], -1)
        rgba = downscale_rgba(np.ascontiguousarray(rgba, dtype=np.uint8), max_side)
    else:
        rgba, info = load_image_rgba(src, return_info=True, max_side=max_side)
        had_alpha, source_size = info.had_alpha, list(rgba.shape[:2])
        if info.full_size is not None:  # the upright full-resolution size, as before downscaling
            source_size = [info.full_size[1], info.full_size[0]]
    record: dict = {"had_alpha": bool(had_alpha), "source_size": source_size}
    if list(rgba.shape[:2]) != source_size:
        record["working_size"] = list(rgba.shape[:2])
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


def _summary_outputs(out_dir: Path) -> dict[str, dict]:
    """Output name -> record of every input generated into ``out_dir`` (its ``generate.json``; a
    summary written before names were claimed counts as its image's stem)."""
    path = Path(out_dir) / SUMMARY_NAME
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} is not a readable summary ({' '.join(str(e).split())}): it maps output names to their "
            "images, so fix or move it, or choose another -o folder"
        ) from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a generate.json summary (a JSON object): move it or choose another -o folder")
    outputs = d.get("outputs")
    if isinstance(outputs, dict):
        return {str(k): v for k, v in outputs.items() if isinstance(v, dict)}
    if isinstance(d.get("image"), str):
        return {Path(d["image"]).stem: d}
    return {}


def _source(image: str | os.PathLike) -> str:
    return str(Path(image).resolve())


def claim_output_names(out_dir: str | os.PathLike, images: Sequence[str | os.PathLike]) -> list[str]:
    """One output name per image, unique in ``out_dir`` (case-insensitively): the file stem, or
    ``<stem>-2``, ``<stem>-3``, ... when another source image already owns it (by this call, by
    ``generate.json``, or by existing ``<name>_input.png`` outputs of an unknown source). The same
    source image (resolved path) keeps its name, so a rerun replaces its own outputs only."""
    out_dir = Path(out_dir)
    owners = {
        name.casefold(): rec.get("source") or _source(rec.get("image", name))
        for name, rec in _summary_outputs(out_dir).items()
    }
    names = []
    for image in images:
        source, stem = _source(image), Path(image).stem or "image"
        for i in itertools.count(1):
            name = stem if i == 1 else f"{stem}-{i}"
            owner = owners.get(name.casefold())
            if owner == source or (owner is None and not (out_dir / f"{name}_input.png").exists()):
                break
        owners[name.casefold()] = source
        names.append(name)
    return names


def write_summary(out_dir: Path, summary: dict, name: str | None = None) -> Path:
    """Record one input's run in ``out_dir/generate.json``: its record at the top level (as for a
    single input) and under ``outputs[name]`` next to every earlier input's (nothing is dropped)."""
    from .io import atomic_write_json

    name = name or Path(summary["image"]).stem
    record = {"name": name, "source": _source(summary["image"]), **summary}
    outputs = _summary_outputs(out_dir)
    outputs[name] = record
    path = Path(out_dir) / SUMMARY_NAME
    atomic_write_json(path, {**record, "outputs": outputs})
    return path
