"""Held-out procedural objects and the cameras they are scored at (DESIGN §5).

``heldout_set(n, teacher, settings)``: the first ``n`` seeds of the ``heldout`` split (never seen by
the teacher's or the student's training), each

* its input II, rendered as the teacher's training data renders it (``teacher.training.data.
  render_example``: straight RGBA at the input camera) and the ground truth at the teacher's own
  cameras C (composited on the teacher's background, 2x supersampled);
* the ground truth at *novel* cameras: ``novel_azimuths`` evenly spaced azimuths at each of
  ``novel_elevations``, on the layout's orbit, as premultiplied RGB (= on black) and alpha, so it
  can be composited on any background. Rendered once at the display resolution (``display_scale``
  x the teacher's) and box-filtered down to the teacher's resolution (4x supersampled there).

The noise of object ``seed`` and draw ``d`` is ``trajectories.noise_seed(f"heldout-{seed}", d)``:
the trajectory cache's rule, so a run is reproducible and two runs score the same N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import orbit_cameras

__all__ = ["HeldoutSet", "NovelCameras", "heldout_set", "novel_cameras", "heldout_noise", "layout_name"]


@dataclass
class NovelCameras:
    azimuths_deg: Tensor  # [Vn]
    elevations_deg: Tensor  # [Vn]
    radius: float
    fov_deg: float

    def at(self, resolution: int) -> tuple[Tensor, Tensor]:  # viewmats [Vn, 4, 4], Ks [Vn, 3, 3]
        return orbit_cameras(self.azimuths_deg, self.elevations_deg, self.radius, self.fov_deg, resolution, resolution)

    @property
    def num_views(self) -> int:
        return int(self.azimuths_deg.numel())


@dataclass
class HeldoutSet:
    seeds: list[int]
    inputs: Tensor  # [B, 4, S, S] uint8 straight RGBA
    layout_gt: Tensor  # [B, V, 3, R, R] uint8, on the teacher's background, at the teacher's cameras
    novel: NovelCameras
    novel_premul: dict[int, Tensor]  # {resolution: [B, Vn, 3, r, r] uint8 premultiplied (on black)}
    novel_alpha: dict[int, Tensor]  # {resolution: [B, Vn, 1, r, r] uint8}

    def __len__(self) -> int:
        return len(self.seeds)

    def novel_gt(self, resolution: int, index, background) -> tuple[Tensor, Tensor, Tensor]:
        """(on ``background`` [b, Vn, 3, r, r], premultiplied, alpha [b, Vn, 1, r, r]) as floats in [0, 1]."""
        premul = self.novel_premul[resolution][index].float() / 255.0
        alpha = self.novel_alpha[resolution][index].float() / 255.0
        bg = torch.as_tensor(background, dtype=torch.float32).reshape(1, 1, 3, 1, 1)
        return (premul + bg * (1 - alpha)).clamp(0, 1), premul, alpha


def layout_name(layout) -> str:
    from ..cameras import LAYOUTS

    for name, lay in LAYOUTS.items():
        if lay == layout:
            return name
    raise ValueError(f"the teacher's layout {layout} is not a named layout")


def novel_cameras(layout, azimuths: int, elevations: tuple[float, ...]) -> NovelCameras:
    """``azimuths`` evenly spaced azimuths (from the input view's) at each elevation (layout's + e)."""
    az = torch.arange(azimuths, dtype=torch.float32) * (360.0 / azimuths) + float(layout.azimuths_deg[0])
    az_all = az.repeat(len(elevations))
    el_all = torch.tensor(elevations, dtype=torch.float32).repeat_interleave(azimuths) + float(layout.elevation_deg)
    return NovelCameras(az_all, el_all, float(layout.radius), float(layout.fov_deg))


def heldout_noise(teacher, seeds: list[int], draw: int) -> Tensor:  # [B, F, C, h, w]
    from ..trajectories import noise_seed

    return torch.cat([teacher.draw_noise(1, noise_seed(f"heldout-{s}", draw)) for s in seeds])


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def heldout_set(
    n: int,
    teacher,
    azimuths: int = 16,
    elevations: tuple[float, ...] = (0.0, 20.0),
    display_scale: int = 4,
    num_gaussians: int = 3000,
) -> HeldoutSet:
    from ..render.views import render_views
    from ..teacher.training.data import RenderSpec, render_example
    from ..world import sample_object, split_seeds

    layout = teacher.layout
    res = layout.resolution
    display = res * display_scale
    spec = RenderSpec(
        layout=layout_name(layout),
        background=tuple(teacher.background),
        num_gaussians=num_gaussians,
        input_resolution=max(64, res),
    )
    novel = novel_cameras(layout, azimuths, elevations)
    vm, ks = novel.at(display)
    seeds = [int(s) for s in split_seeds("heldout", n)]
    inputs, layout_gt, premuls, alphas = [], [], [], []
    for s in seeds:
        rgba, views = render_example(s, spec)
        inputs.append(torch.from_numpy(rgba))
        layout_gt.append(torch.from_numpy(views))
        premul, alpha = render_views(sample_object(s, num_gaussians), vm, ks, display, background=None)
        premuls.append(premul.permute(0, 3, 1, 2))  # [Vn, 3, D, D] float
        alphas.append(alpha.permute(0, 3, 1, 2))
    premul, alpha = torch.stack(premuls), torch.stack(alphas)  # [B, Vn, c, D, D]
    k = display // res  # box filter = exact average of the supersampled pixels

    def down(x: Tensor) -> Tensor:
        return F.avg_pool2d(x.flatten(0, 1), k).reshape(*x.shape[:3], res, res)

    return HeldoutSet(
        seeds=seeds,
        inputs=torch.stack(inputs),
        layout_gt=torch.stack(layout_gt),
        novel=novel,
        novel_premul={display: _to_uint8(premul), res: _to_uint8(down(premul))},
        novel_alpha={display: _to_uint8(alpha), res: _to_uint8(down(alpha))},
    )
