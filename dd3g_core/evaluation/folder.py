"""Evaluation objects from a local folder of renders (the Google Scanned Objects protocol of peers).

Layout (see docs/evaluation_folder.md for an example and how to make one from GSO renders)::

    <root>/
      <object_name>/            one folder per object (sorted by name; names starting with "." are skipped)
        input.png               the single image the generator sees: RGBA, or RGB on a plain background
        views/000.png ...       ground-truth renders (RGBA or RGB, square), any number >= 1
        cameras.json            the cameras of the views (and optionally of input.png)

``cameras.json``::

    {
      "convention": "opencv",        # c2w camera axes: "opencv" (+x right, +y down, +z forward, default)
                                     # or "opengl" (Blender: +x right, +y up, +z backward)
      "world_up": "y",               # c2w world frame: "y" (the project's, default) or "z" (Blender)
      "fov_deg": 49.1,               # vertical field of view in degrees, or
      "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],   # intrinsics in pixels of the stored view image
      "radius": 1.5,                 # default orbit radius for views given by angles
      "views": [
        {"file": "views/000.png", "c2w": [[...], [...], [...], [0, 0, 0, 1]]},
        {"file": "views/001.png", "azimuth_deg": 45, "elevation_deg": 0, "radius": 1.5},
        ...
      ],
      "input": {"azimuth_deg": 0, "elevation_deg": 0}    # optional: the camera of input.png
    }

A view gives its camera as ``c2w`` (camera-to-world 4x4) or as orbit angles in the project's
convention (``dd3g_core.cameras``: azimuth 0 looks from +z, 90 from +x, elevation > 0 above;
``convention``/``world_up`` apply to ``c2w`` only); it may give both, which must then agree.
``fov_deg``/``K`` may also be given per view (overriding the top level). Angles not given are
derived from the camera centre, so every object has ``azimuth_deg``/``elevation_deg``.
Parsing ``cameras.json`` into cameras is :mod:`.folder_cameras`; this module loads the images and
assembles the objects.

Loading (:func:`load_eval_folder`): views are composited on ``background`` (RGBA) or taken as they
are (RGB, alpha 1), resized to ``resolution`` with antialiasing, and ``Ks`` scaled to match; the
input becomes a square ``input_size`` RGBA (padded, centred, framing kept, or recentred with a
margin). Images are decoded by ``synthesis.image_io.load_image_rgba`` (pixel limits, no bomb).
An object with a missing, corrupt or malformed file is not dropped silently: it is listed in the
result's ``rejects`` (and logged), ``strict=True`` raises for it, and a folder with no usable
object raises with every reason.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import check_resolution
from ..images import composite_rgb, resize_square
from .folder_cameras import CAMERAS_FILE, file_inside, parse_camera, read_cameras

__all__ = ["EvalObject", "EvalObjects", "load_eval_folder", "load_eval_object", "LAYOUT"]

log = logging.getLogger(__name__)

INPUT_FILE = "input.png"
DECODE_OVERSAMPLE = 4  # images larger than this many times the target are box-reduced while decoding

LAYOUT = (
    "<root>/<object>/input.png (RGBA or RGB), <root>/<object>/views/*.png (square ground-truth renders), "
    "<root>/<object>/cameras.json ({'fov_deg' or 'K', 'views': [{'file', 'c2w' or "
    "'azimuth_deg'/'elevation_deg'/'radius'}]}); see docs/evaluation_folder.md"
)


@dataclass
class EvalObject:
    name: str
    input_rgba: Tensor  # [4, S, S] uint8 straight RGBA
    views: Tensor  # [V, 3, R, R] float32 in [0, 1], composited on the loader's background
    alpha: Tensor  # [V, 1, R, R] float32 in [0, 1]; 1 for views stored without alpha
    viewmats: Tensor  # [V, 4, 4] world -> camera, OpenCV axes, world +y up
    Ks: Tensor  # [V, 3, 3] in pixels at resolution R
    azimuth_deg: Tensor | None  # [V] (given, or from the camera centre)
    elevation_deg: Tensor | None  # [V]
    view_files: tuple[str, ...] = ()  # [V] paths relative to the object folder
    views_have_alpha: bool = True  # False: at least one view was RGB (alpha set to 1 there)
    input_viewmat: Tensor | None = None  # [4, 4] when cameras.json gives "input"
    input_K: Tensor | None = None  # [3, 3] at S, following the padding/recentring of input_rgba

    @property
    def num_views(self) -> int:
        return int(self.views.shape[0])


class EvalObjects(list):
    """The loaded objects (a ``list[EvalObject]``) plus the objects that could not be used."""

    def __init__(self, objects=(), rejects: list[tuple[str, str]] | None = None, root: Path | None = None):
        super().__init__(objects)
        self.rejects: list[tuple[str, str]] = list(rejects or [])  # (object name, reason naming the file)
        self.root = root


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------


def _decode(path: Path, rel: str, max_side: int) -> tuple[np.ndarray, bool, tuple[int, int]]:
    """uint8 RGBA [h, w, 4], had_alpha, full (W, H); ``ValueError`` naming ``rel`` when unusable."""
    from ..synthesis.image_io import load_image_rgba

    if not path.is_file():
        raise ValueError(f"{rel}: missing")
    try:
        rgba, info = load_image_rgba(path, max_side=max_side, return_info=True)
    except ValueError as e:  # ImageLoadError: corrupt, unrecognised, empty, bomb, all transparent
        raise ValueError(f"{rel}: {e}") from None
    return rgba, info.had_alpha, tuple(info.full_size or info.size)


def _load_view(
    path: Path, rel: str, resolution: int, background: Sequence[float]
) -> tuple[Tensor, Tensor, bool, int]:  # rgb [3, R, R], alpha [1, R, R], had_alpha, stored side
    rgba, had_alpha, (w, h) = _decode(path, rel, DECODE_OVERSAMPLE * resolution)
    if w != h:
        raise ValueError(f"{rel}: views must be square, got {w}x{h}")
    x = torch.from_numpy(rgba).permute(2, 0, 1)[None]  # [1, 4, h, w] uint8
    if had_alpha:
        rgb = composite_rgb(x, background)  # composite before resizing so the edges blend with the background
        alpha = x[:, 3:].float() / 255.0
    else:
        rgb = composite_rgb(x[:, :3])
        alpha = torch.ones_like(x[:, 3:], dtype=torch.float32)
    rgb = resize_square(rgb, resolution).clamp(0.0, 1.0)
    alpha = resize_square(alpha, resolution).clamp(0.0, 1.0)
    return rgb[0], alpha[0], had_alpha, w


def _square_rgba(
    rgba: np.ndarray,  # uint8 [H, W, 4] straight alpha
    left: int,
    top: int,
    side: int,  # the square window in source pixels (may reach outside: transparent there)
    size: int,
) -> Tensor:  # [4, size, size] uint8
    h, w = rgba.shape[:2]
    x = torch.from_numpy(rgba).permute(2, 0, 1).float() / 255.0
    a = x[3:]
    canvas = torch.zeros(4, side, side)
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + side, w), min(top + side, h)
    # premultiplied, so transparent pixels bring no colour into the resized edges
    canvas[:3, sy0 - top : sy1 - top, sx0 - left : sx1 - left] = (x[:3] * a)[:, sy0:sy1, sx0:sx1]
    canvas[3:, sy0 - top : sy1 - top, sx0 - left : sx1 - left] = a[:, sy0:sy1, sx0:sx1]
    if side != size:
        canvas = F.interpolate(canvas[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    canvas = canvas.clamp(0.0, 1.0)
    a8 = (canvas[3:] * 255.0).round()
    straight = torch.where(canvas[3:] > 1e-4, canvas[:3] / canvas[3:].clamp_min(1e-4), 0.0).clamp(0.0, 1.0)
    rgb8 = torch.where(a8 > 0, (straight * 255.0).round(), 0.0)
    return torch.cat([rgb8, a8]).to(torch.uint8)


def _load_input(
    folder: Path, size: int, margin: float | None
) -> tuple[Tensor, tuple[float, float, float, tuple[int, int]]]:  # [4, S, S] uint8, (scale, left, top, stored (W, H))
    """The input as a square RGBA, and the map from stored pixels to it (for its K)."""
    rgba, had_alpha, (w, h) = _decode(folder / INPUT_FILE, INPUT_FILE, DECODE_OVERSAMPLE * size)
    k = w / rgba.shape[1]  # > 1 when the decoder box-reduced a large image
    hh, ww = rgba.shape[:2]
    if margin is None:
        # keep the framing: pad to a centred square (the principal point stays at the centre)
        side = max(hh, ww)
        left, top = (ww - side) // 2, (hh - side) // 2
    else:
        from ..synthesis.postprocess import alpha_bbox

        if not had_alpha:
            raise ValueError(f"{INPUT_FILE}: has no alpha channel, so it cannot be recentred (pass no margin)")
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"input margin must be in [0, 0.5), got {margin}")
        bbox = alpha_bbox(rgba[..., 3].astype(np.float32) / 255.0, 0.1)  # the rgba_images stage's rule
        if bbox is None:
            raise ValueError(f"{INPUT_FILE}: no pixel has alpha > 0.1, nothing to recentre on")
        x0, y0, x1, y1 = bbox
        side = max(1, math.ceil(max(x1 - x0, y1 - y0) / (1.0 - 2.0 * margin)))
        left, top = (x0 + x1 - side) // 2, (y0 + y1 - side) // 2
    return _square_rgba(rgba, left, top, side, size), (size / (side * k), left * k, top * k, (w, h))


# --------------------------------------------------------------------------------------
# objects
# --------------------------------------------------------------------------------------


def load_eval_object(
    folder: str | os.PathLike,
    resolution: int,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    input_size: int = 256,
    input_margin: float | None = None,
) -> EvalObject:
    """One object folder; a ``ValueError`` naming the object and the file when anything is unusable."""
    folder = Path(folder)
    try:
        return _load_object(folder, resolution, background, input_size, input_margin)
    except ValueError as e:
        raise ValueError(f"object {folder.name!r}: {e}") from None


def _load_object(folder: Path, resolution: int, background, input_size: int, margin: float | None) -> EvalObject:
    cams = read_cameras(folder)
    rgbs, alphas, c2ws, Ks, azs, els, files, all_alpha = [], [], [], [], [], [], [], True
    for i, entry in enumerate(cams["views"]):
        where = f"{CAMERAS_FILE}: views[{i}]"
        rel = entry.get("file")
        path = file_inside(folder, rel, where)
        rgb, alpha, had_alpha, side = _load_view(path, rel, resolution, background)
        c2w, K, az, el = parse_camera(entry, cams, where, (side, side))
        K = K.clone()
        K[:2] *= resolution / side  # pixel coordinates scale with the image (centres at +0.5 included)
        rgbs.append(rgb)
        alphas.append(alpha)
        c2ws.append(c2w)
        Ks.append(K)
        azs.append(az)
        els.append(el)
        files.append(rel)
        all_alpha &= had_alpha
    input_rgba, (scale, left, top, in_size) = _load_input(folder, input_size, margin)
    input_viewmat = input_K = None
    if "input" in cams:
        c2w, K, _, _ = parse_camera(cams["input"], cams, f"{CAMERAS_FILE}: input", in_size)
        K = K.clone()
        K[0, 2] -= left  # the square window's origin in stored pixels, then its scale to input_size
        K[1, 2] -= top
        K[:2] *= scale
        input_viewmat, input_K = torch.linalg.inv(c2w).float(), K.float()
    return EvalObject(
        name=folder.name,
        input_rgba=input_rgba,
        views=torch.stack(rgbs),
        alpha=torch.stack(alphas),
        viewmats=torch.linalg.inv(torch.stack(c2ws)).float(),  # inverted in float64: exact rigid inverses
        Ks=torch.stack(Ks).float(),
        azimuth_deg=torch.tensor(azs, dtype=torch.float32),
        elevation_deg=torch.tensor(els, dtype=torch.float32),
        view_files=tuple(files),
        views_have_alpha=all_alpha,
        input_viewmat=input_viewmat,
        input_K=input_K,
    )


def load_eval_folder(
    root: str | os.PathLike,
    resolution: int,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    input_size: int = 256,
    max_objects: int | None = None,
    input_margin: float | None = None,
    strict: bool = False,
) -> EvalObjects:
    """Every object folder under ``root`` (sorted by name), at most ``max_objects`` usable ones.

    ``input_margin`` None keeps the input's framing (padded to a centred square); a float
    recentres it on its alpha bbox with that margin, as the rgba_images stage does. Unusable
    objects go to the result's ``rejects`` (and the log); ``strict`` raises for any of them.
    Raises ``FileNotFoundError`` for a missing root, ``ValueError`` for a root with no object
    folder or no usable object (listing every reason)."""
    root = Path(root)
    check_resolution(resolution, resolution)
    check_resolution(input_size, input_size)
    if max_objects is not None and max_objects < 1:
        raise ValueError(f"max_objects must be >= 1 or None, got {max_objects}")
    if len(background) != 3:
        raise ValueError(f"background must be 3 floats in [0, 1], got {background!r}")
    if not root.exists():
        raise FileNotFoundError(f"evaluation folder {root} does not exist; expected layout: {LAYOUT}")
    if not root.is_dir():
        raise ValueError(f"evaluation folder {root} is not a directory; expected layout: {LAYOUT}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"evaluation folder {root} has no object sub-folders; expected layout: {LAYOUT}")
    out = EvalObjects(root=root)
    for folder in folders:
        if max_objects is not None and len(out) >= max_objects:
            break
        try:
            out.append(load_eval_object(folder, resolution, background, input_size, input_margin))
        except ValueError as e:
            out.rejects.append((folder.name, str(e)))
            log.warning("evaluation folder %s: skipped %s", root, e)
    if out.rejects and (strict or not out):
        reasons = "\n  ".join(reason for _, reason in out.rejects)
        what = "no usable object" if not out else f"{len(out.rejects)} unusable object(s)"
        raise ValueError(f"evaluation folder {root}: {what}:\n  {reasons}\nexpected layout: {LAYOUT}")
    return out
