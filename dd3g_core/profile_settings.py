"""The per-stage settings a :class:`dd3g_core.profiles.Profile` holds besides each stage's own config class.

``teacher`` (:class:`TeacherSettings`), ``evaluation`` (:class:`EvaluationSettings`), ``limits``
(:class:`StageLimits`) and ``promotion`` (:class:`PromotionSettings`). The stage configs with a module of
their own (``RGBASynthesisConfig``, ``TrajectoryCacheConfig``, ``DistillConfig``) live with their stage;
these have none, so they live here, apart from the table of named profiles and the profile-file loading
(``dd3g_core.profiles``, which re-exports them: import them from either).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .promotion.gate import DEFAULT_GATE, check_gate_spec

__all__ = ["TeacherSettings", "EvaluationSettings", "StageLimits", "PromotionSettings"]


@dataclass(frozen=True)
class TeacherSettings:
    """Where the ``teacher`` asset gets the teacher from.

    ``kind``: ``tiny`` (a ``TinyTeacher`` folder) or ``imagedream`` (a local diffusers folder of
    ImageDream ipmv). ``path``: a folder used as is (tiny: the shipped checkpoint); ``None`` in
    ``full`` means it must be given (``$DD3G_TEACHER_PATH``, the settings resource's
    ``teacher_path`` or a profile file's ``teacher.path``). ``recipe``: the ``dd3g teacher recipe``
    that (re)makes a tiny teacher: run when asked to retrain, and always when there is no ``path``.
    ``device``: ``auto`` = the first CUDA device when there is one, else the CPU.
    """

    kind: Literal["tiny", "imagedream"] = "tiny"
    path: str | None = None
    recipe: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in ("tiny", "imagedream"):
            raise ValueError(f"teacher kind must be 'tiny' or 'imagedream', got {self.kind!r}")
        if self.kind == "imagedream" and self.recipe:
            raise ValueError(
                "an ImageDream teacher is not trained here: leave teacher.recipe empty in the full profile"
            )
        if self.kind == "tiny" and not self.path and not self.recipe:
            raise ValueError("a tiny teacher needs a folder (teacher.path) or a recipe to train it (teacher.recipe)")


@dataclass(frozen=True)
class EvaluationSettings:
    """How a distilled student is scored (``dd3g_core.evaluation``; the ``evaluation`` asset, ``dd3g eval``).

    Held-out procedural objects: ``heldout_objects`` seeds of the ``heldout`` split, ``draws`` noise
    draws each (N by the trajectory cache's rule; >= 2 also measures diversity). Novel cameras:
    ``novel_azimuths`` evenly spaced azimuths at each of ``novel_elevations`` (degrees), scored at
    the teacher's resolution and at ``display_scale`` x it. ``fog_band``: width of the band around the
    ground truth's silhouette where fog is measured, as a share of the image side. The per-sample fit
    ceiling optimises the student's number of Gaussians to the first ``fit_objects`` objects' teacher
    views for ``fit_steps`` Adam steps (0 objects: no ceiling). ``lpips_weights`` / ``clip_weights``:
    local files (a VGG16 + LPIPS ``lin*`` safetensors; a transformers CLIP folder); absent, the metric
    is reported as unavailable. ``folder``: a local folder of rendered evaluation objects
    (``docs/evaluation_folder.md``) scored instead of procedural objects when set. ``grid_objects``:
    objects shown in the report's image grids and turntables. ``teacher_steps`` / ``teacher_guidance``: how
    the teacher's own views are sampled, which must be how the trajectory cache samples them (the student
    learns the teacher *as cached*; teacher agreement is measured against the same sampler); ``None``: the
    teacher's defaults (and no change to the settings' record, so older references keep their version).
    """

    heldout_objects: int = 8
    draws: int = 2
    novel_azimuths: int = 16
    novel_elevations: tuple[float, ...] = (0.0, 20.0)
    display_scale: int = 4
    fog_band: float = 0.08
    fit_objects: int = 8
    fit_steps: int = 300
    lpips_weights: str | None = None
    clip_weights: str | None = None
    folder: str | None = None
    grid_objects: int = 4
    batch_size: int = 8
    teacher_steps: int | None = None
    teacher_guidance: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "novel_elevations", tuple(float(e) for e in self.novel_elevations))
        for name in ("heldout_objects", "draws", "novel_azimuths", "display_scale", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"evaluation.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("fit_objects", "fit_steps", "grid_objects"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"evaluation.{name} must be >= 0, got {getattr(self, name)}")
        if not self.novel_elevations or any(abs(e) >= 90 for e in self.novel_elevations):
            raise ValueError(f"evaluation.novel_elevations must be angles in (-90, 90), got {self.novel_elevations}")
        if self.teacher_steps is not None and int(self.teacher_steps) < 1:
            raise ValueError(f"evaluation.teacher_steps must be >= 1 (null: the teacher's), got {self.teacher_steps}")
        if not 0 < self.fog_band < 0.5:
            raise ValueError(f"evaluation.fog_band must be a share of the image side in (0, 0.5), got {self.fog_band}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["novel_elevations"] = list(self.novel_elevations)
        for name in ("teacher_steps", "teacher_guidance"):  # at the teacher's defaults: the record as before
            if d[name] is None:
                del d[name]
        return d


@dataclass(frozen=True)
class StageLimits:
    """How much of a shard partition may be rejected before the partition fails.

    ``<stage>_max_reject_share``: the largest share of a partition's attempted samples that may be
    rejected (filters, undecodable inputs, bad keys, non-finite teacher outputs). Above it, or with no
    sample accepted at all, the partition fails with the counts and the most common reasons and is not
    published (``dd3g_core.shards.rules.RejectShareError``), so a broken stage never passes as an
    empty or thin success and is never a cache hit. Not part of any stage version: changing a limit
    changes no output, only what is accepted. SDXL + matting rejects are normal (0.5); the trajectory
    cache only rejects broken inputs or teacher outputs (0.1).
    """

    rgba_max_reject_share: float = 0.5
    trajectories_max_reject_share: float = 0.1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"limits.{f.name} must be a share in [0, 1], got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?]+$")


@dataclass(frozen=True)
class PromotionSettings:
    """The nightly retrain (``pipelines.schedules.nightly_retrain``) and the gate a retrained student must pass
    to become the accepted one (``dd3g_core.promotion``).

    ``gate``: headline metric (``{display}`` = the display resolution) -> the largest regression allowed
    against the accepted student, in the metric's unit; whether higher or lower is better is the metric's.
    ``warm_start``: a retrain starts from the accepted student's weights (False: from the teacher, as
    ``distill`` does). ``cron`` / ``timezone``: when the schedule ticks (5-field cron, an IANA zone);
    ``schedule_running``: the schedule starts running with ``dagster-daemon`` (False: off until switched on
    in the UI). ``max_attempts``: a tick whose sources already had this many retrain runs that did not
    promote is skipped until a source changes (a refused or broken retrain is not retried every night).
    """

    gate: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_GATE))
    warm_start: bool = True
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    schedule_running: bool = True
    max_attempts: int = 2

    def __post_init__(self) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        check_gate_spec(self.gate)
        object.__setattr__(self, "gate", {str(k): float(v) for k, v in self.gate.items()})
        parts = str(self.cron).split()
        if len(parts) != 5 or not all(_CRON_FIELD.match(p) for p in parts):
            raise ValueError(f"promotion.cron must be a 5-field cron string such as '0 2 * * *', got {self.cron!r}")
        try:
            ZoneInfo(str(self.timezone))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"promotion.timezone must be an IANA time zone such as 'UTC' or 'Europe/Paris', got {self.timezone!r}"
            ) from None
        for name in ("warm_start", "schedule_running"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"promotion.{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"promotion.max_attempts must be an integer >= 1, got {self.max_attempts!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "gate": dict(self.gate)}
