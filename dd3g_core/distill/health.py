"""Is the student still a 3D object? Gaussian statistics watched during training.

A diverging run does not always give a NaN: the Gaussians can collapse (every opacity near zero, so
the renders are the background and the RGB loss stalls at the background's error) or saturate
(every scale pinned at a bound of its activation). Either way the exported model would be
degenerate. The trainer logs these statistics with the losses and stops at the first logged window
that shows a collapse, naming the step, before a checkpoint or an export is written.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["DegenerateStudentError", "gaussian_health", "check_health", "MIN_MEAN_OPACITY", "MAX_AT_BOUND"]

MIN_MEAN_OPACITY = 1e-3  # below: no Gaussian is visible (a healthy tiny student: ~0.3)
MAX_AT_BOUND = 0.98  # share of scales at min_scale / max_scale above which the shape head has saturated
_BOUND_TOLERANCE = 1e-3  # relative distance to a bound that counts as "at" it


class DegenerateStudentError(RuntimeError):
    """The student's Gaussians collapsed or saturated: the run stops instead of exporting them."""


@torch.no_grad()
def gaussian_health(
    opacity_logits: Tensor,  # [B, N]
    log_scales: Tensor,  # [B, N, 3]
    min_scale: float,
    max_scale: float,
) -> dict[str, Tensor]:  # scalars: {"stat_opacity_mean", "stat_scale_at_bound"}
    scales = log_scales.float().exp()
    at_bound = (scales <= min_scale * (1 + _BOUND_TOLERANCE)) | (scales >= max_scale * (1 - _BOUND_TOLERANCE))
    return {
        "stat_opacity_mean": torch.sigmoid(opacity_logits.float()).mean(),
        "stat_scale_at_bound": at_bound.float().mean(),
    }


def check_health(window: Mapping[str, float], step: int) -> None:
    """Raise ``DegenerateStudentError`` naming ``step`` if a logged window's statistics show a collapse."""
    opacity, at_bound = window.get("stat_opacity_mean"), window.get("stat_scale_at_bound")
    if opacity is not None and opacity < MIN_MEAN_OPACITY:
        raise DegenerateStudentError(
            f"step {step}: the student's Gaussians collapsed (mean opacity {opacity:.2e} < {MIN_MEAN_OPACITY:g}): "
            "its renders are the empty background. Lower `lr`, check the trajectories (`dd3g` validate) or "
            "resume from an earlier checkpoint; nothing was exported"
        )
    if at_bound is not None and at_bound > MAX_AT_BOUND:
        raise DegenerateStudentError(
            f"step {step}: {at_bound:.1%} of the Gaussians' scales sit at a bound of the scale activation "
            f"(> {MAX_AT_BOUND:.0%}): the shape head saturated. Lower `lr` or widen "
            "`model_overrides.min_scale`/`max_scale`; nothing was exported"
        )
