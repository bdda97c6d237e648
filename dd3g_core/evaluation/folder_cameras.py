"""``cameras.json`` of an evaluation object folder -> camera-to-world matrices and pixel intrinsics.

The format is described in :mod:`.folder` (and docs/evaluation_folder.md); this module only turns one
object's file into float64 cameras in the project's frame (OpenCV camera axes, world +y up), so that
:mod:`.folder` can invert them into viewmats exactly. Every problem is a ``ValueError`` whose message
names the file and the entry (``cameras.json: views[3].c2w: ...``): the loader prefixes the object.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from ..cameras import intrinsics, orbit_c2w, orbit_position

CAMERAS_FILE = "cameras.json"
MAX_CAMERAS_BYTES = 16 << 20  # a cameras.json larger than this is not a camera list (typo guard)

__all__ = ["CAMERAS_FILE", "MAX_CAMERAS_BYTES", "file_inside", "parse_camera", "read_cameras"]

# Blender's world (+z up, front facing -y) -> the project's (+y up, front facing +z): (x, y, z) -> (x, z, -y).
_Z_UP_TO_Y_UP = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
# OpenGL camera axes (y up, z backward) -> OpenCV (y down, z forward): flip the camera's y and z columns.
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def _matrix(x, shape: tuple[int, int], where: str) -> Tensor:  # -> float64 [*shape]
    try:
        m = torch.tensor(x, dtype=torch.float64)
    except (TypeError, ValueError):
        m = None
    if m is None or tuple(m.shape) != shape or not torch.isfinite(m).all():
        raise ValueError(f"{where}: expected a {shape[0]}x{shape[1]} matrix of finite numbers, got {str(x)[:80]}")
    return m


def _number(x, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not lo < x < hi:
        raise ValueError(f"{where}: expected a finite number in ({lo:g}, {hi:g}), got {x!r}")
    return float(x)


def _c2w(raw, convention: str, world_up: str, where: str) -> Tensor:  # -> float64 [4, 4] OpenCV, +y up
    m = _matrix(raw, (4, 4), where)
    if not torch.allclose(m[3], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64), atol=1e-6):
        raise ValueError(f"{where}: the last row of a camera-to-world matrix must be [0, 0, 0, 1], got {m[3].tolist()}")
    rot = m[:3, :3]
    # A scaled or sheared "rotation" (some exporters bake the object scale in) would silently
    # change the focal length; refuse it instead of guessing.
    if not torch.allclose(rot.T @ rot, torch.eye(3, dtype=torch.float64), atol=1e-3) or torch.det(rot) <= 0:
        raise ValueError(f"{where}: the 3x3 block of c2w is not a rotation (orthonormal, det +1)")
    if convention == "opengl":
        m = m @ _GL_TO_CV
    if world_up == "z":
        m = _Z_UP_TO_Y_UP @ m
    return m


def parse_camera(
    entry: dict, top: dict, where: str, size: tuple[int, int]
) -> tuple[Tensor, Tensor, float, float]:  # c2w [4, 4] f64, K [3, 3] f64 in stored pixels, azimuth, elevation
    """One camera of cameras.json (a view or "input"); ``size`` = the stored image's (W, H)."""
    has_c2w = "c2w" in entry
    has_angles = "azimuth_deg" in entry or "elevation_deg" in entry
    if not has_c2w and not has_angles:
        raise ValueError(f"{where}: give the camera as 'c2w' or as 'azimuth_deg'/'elevation_deg'/'radius'")
    c2w = az = el = None
    if has_angles:
        az = _number(entry.get("azimuth_deg"), f"{where}.azimuth_deg")
        el = _number(entry.get("elevation_deg", 0.0), f"{where}.elevation_deg", -90.0, 90.0)
        radius = entry.get("radius", top.get("radius"))
        if radius is None and not has_c2w:
            raise ValueError(f"{where}: 'radius' is needed (per view or at the top level) with orbit angles")
    if has_c2w:
        c2w = _c2w(entry["c2w"], top["convention"], top["world_up"], f"{where}.c2w")
        centre = c2w[:3, 3]
        r = float(centre.norm())
        if r < 1e-9:
            raise ValueError(f"{where}.c2w: the camera sits at the origin (no orbit angles)")
        if has_angles:
            r_given = r if radius is None else _number(radius, f"{where}.radius", 0.0)
            pos = orbit_position(torch.tensor(az), torch.tensor(el), torch.tensor(r_given)).double()
            if (pos - centre).norm() > 1e-3 * max(r, 1.0):
                raise ValueError(
                    f"{where}: 'c2w' puts the camera at {[round(v, 4) for v in centre.tolist()]} but the angles "
                    f"at {[round(v, 4) for v in pos.tolist()]} (check 'convention'/'world_up')"
                )
        else:
            el = math.degrees(math.asin(max(-1.0, min(1.0, float(centre[1]) / r))))
            az = math.degrees(math.atan2(float(centre[0]), float(centre[2]))) % 360.0
    else:
        c2w = orbit_c2w([az], [el], [_number(radius, f"{where}.radius", 0.0)])[0].double()
    # the entry's own intrinsics replace the top level's as a whole (a per-view fov under a top-level K)
    own = "fov_deg" in entry or "K" in entry
    fov, K = (entry.get("fov_deg"), entry.get("K")) if own else (top.get("fov_deg"), top.get("K"))
    if (fov is None) == (K is None):
        level = where if own else f"{CAMERAS_FILE} (top level)"
        raise ValueError(f"{where}: give exactly one of 'fov_deg' (vertical, degrees) or 'K' (pixels) in {level}")
    if K is not None:
        K = _matrix(K, (3, 3), f"{where}.K")
        if K[0, 0] <= 0 or K[1, 1] <= 0 or not torch.allclose(K[2], torch.tensor([0.0, 0, 1], dtype=K.dtype)):
            raise ValueError(f"{where}.K: expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
    else:
        K = intrinsics(_number(fov, f"{where}.fov_deg", 0.0, 180.0), *size)[0].double()  # vertical: of H
    return c2w, K, float(az), float(el)


def read_cameras(folder: Path) -> dict:
    """The object's cameras.json, checked at the top level and given its defaults (``convention``,
    ``world_up``); each camera entry is checked when :func:`parse_camera` reads it."""
    path = folder / CAMERAS_FILE
    if not path.is_file():
        raise ValueError(f"{CAMERAS_FILE}: missing")
    if path.stat().st_size > MAX_CAMERAS_BYTES:
        raise ValueError(f"{CAMERAS_FILE}: {path.stat().st_size} bytes, more than {MAX_CAMERAS_BYTES}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{CAMERAS_FILE}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{CAMERAS_FILE}: invalid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{CAMERAS_FILE}: expected an object {{'views': [...], ...}}, got {type(data).__name__}")
    data.setdefault("convention", "opencv")
    data.setdefault("world_up", "y")
    if data["convention"] not in ("opencv", "opengl"):
        raise ValueError(f"{CAMERAS_FILE}: 'convention' must be 'opencv' or 'opengl', got {data['convention']!r}")
    if data["world_up"] not in ("y", "z"):
        raise ValueError(f"{CAMERAS_FILE}: 'world_up' must be 'y' or 'z', got {data['world_up']!r}")
    views = data.get("views")
    if not isinstance(views, list) or not views or not all(isinstance(v, dict) for v in views):
        raise ValueError(f"{CAMERAS_FILE}: 'views' must be a non-empty list of objects {{'file': ..., camera}}")
    if "input" in data and not isinstance(data["input"], dict):
        raise ValueError(f"{CAMERAS_FILE}: 'input' must be an object (a camera), got {type(data['input']).__name__}")
    return data


def file_inside(folder: Path, rel, where: str) -> Path:
    """The resolved path of a view's ``file`` entry, which must stay inside the object folder."""
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"{where}: 'file' must be a path relative to the object folder, got {rel!r}")
    path = (folder / rel).resolve()
    # A view file outside its object folder is a layout mistake (or a path trick): refuse it.
    if not path.is_relative_to(folder.resolve()):
        raise ValueError(f"{where}: file {rel!r} lies outside the object folder")
    return path
