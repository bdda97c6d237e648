"""Camera maths: the one module that owns it.

Conventions (the same as gsplat's):

* World: right-handed, **+y up**; objects live around the origin.
* Camera axes: **OpenCV** — +x right, +y down, +z forward (the viewing direction).
* ``viewmats`` [..., C, 4, 4] map world -> camera (``x_cam = R x_world + t``).
* ``Ks`` [..., C, 3, 3] are pinhole intrinsics in pixels; the principal point is the image
  centre ``(W/2, H/2)`` and pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``.
* Orbit angles: azimuth in degrees, 0 looks at the object's front from +z, increasing
  counter-clockwise seen from above (towards +x); **elevation > 0 puts the camera above**
  the object (kiui/LGM's ``orbit_camera`` uses the opposite sign).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_RESOLUTION = 8192  # renders bigger than this per side are refused (a typo guard)


def _as_tensor(x, dtype=torch.float32, device=None) -> Tensor:
    return torch.as_tensor(x, dtype=dtype, device=device)


def look_at(
    eye: Tensor,  # [..., 3]
    target: Tensor,  # [..., 3]
    up: Sequence[float] | Tensor = (0.0, 1.0, 0.0),
) -> Tensor:  # [..., 4, 4] camera-to-world, OpenCV axes
    """Camera-to-world matrix of a camera at ``eye`` looking at ``target`` (OpenCV axes)."""
    eye, target = torch.broadcast_tensors(eye, target)
    forward = target - eye
    dist = forward.norm(dim=-1, keepdim=True)
    if (dist <= 1e-9).any():
        raise ValueError("look_at: camera position equals its target (no viewing direction)")
    forward = forward / dist
    up_t = _as_tensor(up, eye.dtype, eye.device).expand_as(forward)
    right = torch.linalg.cross(forward, up_t, dim=-1)
    # Looking straight up/down makes `up` parallel to the view direction: fall back to +z/-z
    # as the up hint so the basis stays defined (the azimuth is then ambiguous anyway).
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    if degenerate.any():
        alt = torch.tensor([0.0, 0.0, -1.0], dtype=eye.dtype, device=eye.device).expand_as(forward)
        right = torch.where(degenerate, torch.linalg.cross(forward, alt, dim=-1), right)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(forward, right, dim=-1)
    c2w = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = down
    c2w[..., :3, 2] = forward
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def orbit_position(
    azimuth_deg: Tensor,  # [...]
    elevation_deg: Tensor,  # [...]
    radius: Tensor,  # [...]
) -> Tensor:  # [..., 3]
    az = torch.deg2rad(azimuth_deg)
    el = torch.deg2rad(elevation_deg)
    return torch.stack(
        [radius * torch.cos(el) * torch.sin(az), radius * torch.sin(el), radius * torch.cos(el) * torch.cos(az)],
        dim=-1,
    )


def orbit_c2w(
    azimuth_deg,  # [C] or scalar
    elevation_deg,  # [C] or scalar
    radius,  # [C] or scalar
    target=(0.0, 0.0, 0.0),
) -> Tensor:  # [C, 4, 4]
    az, el, r = torch.broadcast_tensors(_as_tensor(azimuth_deg), _as_tensor(elevation_deg), _as_tensor(radius))
    if (r <= 0).any():
        raise ValueError(f"orbit radius must be > 0, got {r.min().item()}")
    tgt = _as_tensor(target)
    eye = orbit_position(az.reshape(-1), el.reshape(-1), r.reshape(-1)) + tgt
    return look_at(eye, tgt.expand_as(eye))


def intrinsics(
    fov_deg,  # vertical field of view, scalar or [C]
    width: int,
    height: int,
) -> Tensor:  # [C, 3, 3] (C = 1 for a scalar fov)
    check_resolution(width, height)
    fov = _as_tensor(fov_deg).reshape(-1)
    if not torch.isfinite(fov).all() or (fov <= 0).any() or (fov >= 180).any():
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov.tolist()}")
    f = (height / 2.0) / torch.tan(torch.deg2rad(fov) / 2.0)
    K = torch.zeros(fov.shape[0], 3, 3)
    K[:, 0, 0] = f
    K[:, 1, 1] = f
    K[:, 0, 2] = width / 2.0
    K[:, 1, 2] = height / 2.0
    K[:, 2, 2] = 1.0
    return K


def check_resolution(width: int, height: int) -> None:
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise ValueError(f"image size must be positive integers, got {width}x{height}")
    if width > MAX_RESOLUTION or height > MAX_RESOLUTION:
        raise ValueError(f"image size {width}x{height} exceeds the {MAX_RESOLUTION}px limit per side")


def orbit_cameras(
    azimuths_deg,  # [C]
    elevations_deg,  # [C] or scalar
    radius,  # [C] or scalar
    fov_deg: float,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:  # viewmats [C, 4, 4], Ks [C, 3, 3]
    """Orbit cameras around the origin -> (``viewmats``, ``Ks``) in gsplat's convention."""
    c2w = orbit_c2w(azimuths_deg, elevations_deg, radius)
    K = intrinsics(fov_deg, width, height).expand(c2w.shape[0], 3, 3).clone()
    return torch.linalg.inv(c2w), K


def camera_centers(viewmats: Tensor) -> Tensor:  # [..., C, 4, 4] -> [..., C, 3]
    R = viewmats[..., :3, :3]
    t = viewmats[..., :3, 3:]
    return -(R.transpose(-1, -2) @ t)[..., 0]


def pixel_rays(
    viewmats: Tensor,  # [..., C, 4, 4] world -> camera (OpenCV axes)
    Ks: Tensor,  # [..., C, 3, 3] intrinsics in pixels of a width x height image
    width: int,
    height: int,
    grid: tuple[int, int] | None = None,  # (gw, gh): rays through the cell centres of a gw x gh partition
) -> tuple[Tensor, Tensor]:  # origins, unit directions, each [..., C, gh, gw, 3] (default gh, gw = height, width)
    """World-space rays through pixel centres (``grid`` None) or through the centres of the cells of a
    coarser grid over the image (row = +y image axis, as rendered images)."""
    check_resolution(width, height)
    gw, gh = (width, height) if grid is None else (int(grid[0]), int(grid[1]))
    xs_ = (torch.arange(gw, dtype=Ks.dtype, device=Ks.device) + 0.5) / (gw / float(width))
    ys_ = (torch.arange(gh, dtype=Ks.dtype, device=Ks.device) + 0.5) / (gh / float(height))
    ys, xs = torch.meshgrid(ys_, xs_, indexing="ij")
    fx, fy = Ks[..., 0, 0, None, None], Ks[..., 1, 1, None, None]
    cx, cy = Ks[..., 0, 2, None, None], Ks[..., 1, 2, None, None]
    d_cam = torch.stack([(xs - cx) / fx, (ys - cy) / fy, torch.ones_like((xs - cx) / fx)], -1)  # [..., C, gh, gw, 3]
    rot_c2w = viewmats[..., :3, :3].transpose(-1, -2)
    d = torch.einsum("...ij,...hwj->...hwi", rot_c2w, d_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = camera_centers(viewmats)[..., None, None, :].expand_as(d)
    return o, d


def plucker(origins: Tensor, directions: Tensor) -> Tensor:  # [..., 3] x2 -> [..., 6]
    """Plücker coordinates (o x d, d) of rays (``directions`` unit length)."""
    return torch.cat([torch.linalg.cross(origins, directions, dim=-1), directions], dim=-1)


# --------------------------------------------------------------------------------------
# View layouts: which cameras the teacher generates, with named presets.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewLayout:
    """The teacher's output cameras, relative to the input view (which sits at azimuth 0).

    ``azimuths_deg`` lists the generated views; ``input_view`` is the index of the generated
    view whose camera coincides with the input image's (the "copy" view), or -1.
    """

    azimuths_deg: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
    elevation_deg: float = 0.0
    radius: float = 1.5
    fov_deg: float = 49.1
    resolution: int = 256
    input_view: int = 0
    near_plane: float = 0.5
    far_plane: float = 2.5

    @property
    def num_views(self) -> int:
        return len(self.azimuths_deg)

    def cameras(
        self, azimuth_offset_deg: float = 0.0, elevation_offset_deg: float = 0.0, resolution: int | None = None
    ) -> tuple[Tensor, Tensor]:  # [V, 4, 4], [V, 3, 3]
        """The layout's cameras, optionally rotated (implicit verification renders there)."""
        res = resolution or self.resolution
        az = torch.tensor(self.azimuths_deg) + azimuth_offset_deg
        el = torch.full_like(az, self.elevation_deg + elevation_offset_deg)
        return orbit_cameras(az, el, self.radius, self.fov_deg, res, res)

    def input_camera(self, resolution: int | None = None) -> tuple[Tensor, Tensor]:  # [1,4,4], [1,3,3]
        res = resolution or self.resolution
        return orbit_cameras([0.0], [self.elevation_deg], self.radius, self.fov_deg, res, res)


LAYOUTS: dict[str, ViewLayout] = {
    # ImageDream as LGM drives it: 4 orthogonal views at elevation 0, 256 px, LGM's render camera.
    "imagedream": ViewLayout(),
    # The tiny CPU teacher: same geometry, 32 px.
    "tiny": ViewLayout(resolution=32),
}


def get_layout(name: str) -> ViewLayout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown view layout {name!r}; choose from {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def imagedream_camera_embedding(
    azimuths_deg,  # [V]
    elevation_deg: float = 0.0,
    extra_view: bool = True,
) -> Tensor:  # [V (+1), 16]
    """ImageDream's 16-d camera conditioning (``get_camera(..., blender_coord=True)``).

    kiui's OpenGL orbit pose (radius 1, camera above for kiui elevation < 0, so our elevation
    is passed negated as mvdream_diffusers does), then the "blender" world change on the rows
    (``[x, -z, y, w]``), flattened row-major; ``extra_view`` appends the zero vector ImageDream
    uses for the image-prompt view.
    """
    az = torch.deg2rad(_as_tensor(azimuths_deg).reshape(-1))
    e = torch.deg2rad(torch.full_like(az, -float(elevation_deg)))
    campos = torch.stack([torch.cos(e) * torch.sin(az), -torch.sin(e), torch.cos(e) * torch.cos(az)], -1)
    f = campos / campos.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0]).expand_as(f)
    right = torch.linalg.cross(up, f, dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    upv = torch.linalg.cross(f, right, dim=-1)
    pose = torch.zeros(az.shape[0], 4, 4)
    pose[:, :3, 0], pose[:, :3, 1], pose[:, :3, 2], pose[:, :3, 3] = right, upv, f, campos
    pose[:, 3, 3] = 1.0
    pose = pose[:, [0, 2, 1, 3]]
    pose[:, 1] = -pose[:, 1]
    emb = pose.reshape(-1, 16)
    if extra_view:
        emb = torch.cat([emb, torch.zeros(1, 16)], 0)
    return emb
