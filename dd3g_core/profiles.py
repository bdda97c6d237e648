"""The profile table: what ``tiny``, ``smoke`` and ``full`` mean, for every stage, in one place.

A profile is the settings of the whole recipe for one kind of machine:

=========  ==========================================================================================
``tiny``   the embedded default on a laptop CPU: procedural objects on a colour key, the shipped tiny
           teacher (pixel space), the tiny PEPD, the project's CPU rasterizer (~12 min on 2 cores)
``smoke``  seconds, for tests and CI: the same classes at toy sizes; the teacher is always trained
           by the seconds-long ``smoke`` recipe, so nothing depends on shipped weights
``full``   GPUs and real weights: SDXL + rembg from local files, ImageDream from a local folder,
           the full PEPD (65,536 Gaussians), bf16, gsplat on CUDA
=========  ==========================================================================================

Each :class:`Profile` holds one settings object per stage: ``rgba`` (:class:`RGBASynthesisConfig`),
``trajectories`` (:class:`TrajectoryCacheConfig`), ``teacher`` (:class:`TeacherSettings`),
``distill`` (:class:`DistillConfig`) and ``evaluation`` (:class:`EvaluationSettings`), plus ``limits``
(:class:`StageLimits`: how many rejects a shard partition may have before it fails; no stage version
depends on them) and ``promotion`` (:class:`PromotionSettings`: the nightly retrain and its regression
gate). The Dagster
pipeline reads it once (``pipelines.resources``); ``python -m dd3g_core.distill.train --preset NAME``
takes the profile's ``distill`` settings.

``DD3G_PROFILE`` (or :func:`get_profile`) takes a name or the path of a JSON *profile file* that
changes fields of a named profile, stage by stage, for instance a full profile with a cluster's own
sizes, or the small full profile the tests run on CPU::

    {"base": "full",
     "rgba": {"num_shards": 4, "samples_per_shard": 250},
     "trajectories": {"batch_size": 16},
     "teacher": {"path": "/models/imagedream-ipmv-diffusers"},
     "distill": {"steps": 20000, "model_overrides": {"depth": 8}},
     "evaluation": {"heldout_objects": 32},
     "limits": {"rgba_max_reject_share": 0.7},
     "promotion": {"cron": "30 3 * * *", "timezone": "Europe/Paris", "gate": {"psnr_{display}": 0.2}}}
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .distill.config import DistillConfig
from .paths import TINY_TEACHER_DIR
from .promotion.gate import DEFAULT_GATE, check_gate_spec
from .synthesis.config import QualityFilters, RGBASynthesisConfig
from .trajectories.config import TrajectoryCacheConfig

__all__ = [
    "Profile",
    "TeacherSettings",
    "EvaluationSettings",
    "StageLimits",
    "PromotionSettings",
    "PROFILES",
    "PROFILE_ENV",
    "TEACHER_PATH_ENV",
    "get_profile",
    "profile_names",
]

PROFILE_ENV = "DD3G_PROFILE"
TEACHER_PATH_ENV = "DD3G_TEACHER_PATH"
STAGES = ("rgba", "trajectories", "teacher", "distill", "evaluation")
SECTIONS = (*STAGES, "limits", "promotion")  # what a profile (file) sets


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


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    rgba: RGBASynthesisConfig
    trajectories: TrajectoryCacheConfig
    teacher: TeacherSettings
    distill: DistillConfig
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    limits: StageLimits = field(default_factory=StageLimits)
    promotion: PromotionSettings = field(default_factory=PromotionSettings)

    @property
    def num_shards(self) -> int:
        """Shards of ``rgba_images`` = partitions of both shard stages."""
        return int(self.rgba.num_shards)

    def shard_partition_keys(self) -> list[str]:
        return [f"{i:05d}" for i in range(self.num_shards)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for run metadata and reports."""
        out = {"name": self.name}
        for stage in SECTIONS:
            value = getattr(self, stage)
            out[stage] = value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value)
        return json.loads(json.dumps(out, default=str))


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        description="embedded CPU default: procedural world, shipped tiny teacher, tiny PEPD (~12 min on 2 cores)",
        # procedural objects on a colour key, 8 shards x 32 samples at 64 px
        rgba=RGBASynthesisConfig(),
        # 2 noise draws per image, 10 DDIM steps (as good as the teacher's 25: docs/experiments/teacher_training.md),
        # x_t kept at steps 2/4/6/8; batches of 8 (the fastest on 2 cores; docs/experiments/pipeline_runs.md)
        trajectories=TrajectoryCacheConfig(num_noise_draws=2, steps=10, record_steps=(2, 4, 6, 8), batch_size=8),
        teacher=TeacherSettings(kind="tiny", path=str(TINY_TEACHER_DIR), recipe="shipped"),
        # the solid-student recipe at a laptop's budget: 800 steps x batch 8 at 3x the learning rate, as good as
        # the shipped student (the same recipe at 1500 steps on 4 draws: assets/profiles/tiny-long.json)
        distill=DistillConfig(steps=800, lr=1.2e-3, warmup_steps=30, implicit_ramp=(160, 480)),
        # 64 held-out objects x 2 draws, 16 azimuths x 2 elevations at 32 and 128 px, fit ceiling on 8
        # (docs/evaluation.md); the teacher's views sampled as the trajectory cache samples them
        evaluation=EvaluationSettings(heldout_objects=64, draws=2, fit_objects=8, teacher_steps=10),
    ),
    "smoke": Profile(
        name="smoke",
        description="seconds, for tests and CI: toy sizes, a teacher trained by the smoke recipe",
        rgba=RGBASynthesisConfig(
            resolution=32, render_resolution=64, num_gaussians=800, samples_per_shard=4, num_shards=2
        ),
        # CFG on (guidance 2) so the guided path is exercised
        trajectories=TrajectoryCacheConfig(
            num_noise_draws=2, steps=3, guidance=2.0, record_steps=(1,), batch_size=4, samples_per_shard=4
        ),
        teacher=TeacherSettings(kind="tiny", path=None, recipe="smoke"),
        distill=DistillConfig(
            steps=6,
            batch_size=2,
            warmup_steps=1,
            checkpoint_every=2,
            log_every=1,
            implicit_ramp=(2, 4),
            implicit_every=1,
            num_workers=0,
            shuffle_buffer=8,
        ),
        evaluation=EvaluationSettings(
            heldout_objects=2,
            draws=2,
            novel_azimuths=4,
            display_scale=2,
            fit_objects=1,
            fit_steps=5,
            grid_objects=2,
            teacher_steps=3,
            teacher_guidance=2.0,
        ),
    ),
    "full": Profile(
        name="full",
        description="GPUs, real weights: SDXL + rembg, ImageDream, the full PEPD in bf16 with gsplat",
        # SDXL + rembg at 256 px (paths from $DD3G_SDXL_PATH / $DD3G_REMBG_MODEL); 120 shards x 1000 = the
        # paper's 120k images
        rgba=RGBASynthesisConfig(
            generator="sdxl",
            matting="rembg",
            resolution=256,
            samples_per_shard=1000,
            num_shards=120,
            sdxl_steps=30,
            sdxl_guidance=5.0,
            sdxl_size=1024,
            sdxl_batch_size=4,
            filters=QualityFilters(min_coverage=0.03, max_coverage=0.8, border_px=2),
        ),
        trajectories=TrajectoryCacheConfig(
            num_noise_draws=4,
            steps=50,
            guidance=5.0,
            record_steps=(10, 20, 30, 40),
            batch_size=8,
            samples_per_shard=64,
            store_dtype="float16",
        ),
        teacher=TeacherSettings(kind="imagedream", path=None),
        # per-GPU batch 4 x accumulation 4, bf16
        distill=DistillConfig(
            model="full",
            steps=30000,
            batch_size=4,
            grad_accum=4,
            lr=1e-4,
            warmup_steps=1000,
            mixed_precision="bf16",
            ema_decay=0.9999,
            implicit_ramp=(5000, 15000),
            implicit_weight=0.05,
            implicit_every=1,
            implicit_guidance=5.0,
            implicit_azimuth_range=(0.0, 360.0),
            implicit_elevation_range=(-10.0, 20.0),
            num_workers=4,
            checkpoint_every=1000,
            log_every=50,
            keep_checkpoints=3,
        ),
        # 256 px teacher views: display at 2x (512 px); set evaluation.folder to score GSO-style renders
        # the teacher's own views sampled as the trajectory cache samples them (ImageDream's default is 30 steps)
        evaluation=EvaluationSettings(
            heldout_objects=32,
            draws=2,
            display_scale=2,
            fit_objects=4,
            fit_steps=500,
            teacher_steps=50,
            teacher_guidance=5.0,
        ),
    ),
}


def profile_names() -> list[str]:
    return list(PROFILES)


def _changed(stage: str, base: Any, changes: Mapping[str, Any]) -> Any:
    if not isinstance(changes, Mapping):
        raise ValueError(f"profile file: {stage!r} must be an object of field changes, got {type(changes).__name__}")
    if stage == "distill":
        return DistillConfig.from_dict({**base.to_dict(), **changes})
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"profile file: unknown {stage} settings {unknown}; known: {sorted(known)}")
    changes = dict(changes)
    if stage == "rgba" and isinstance(changes.get("filters"), Mapping):
        changes["filters"] = dataclasses.replace(base.filters, **changes["filters"])
    if stage == "evaluation" and "novel_elevations" in changes:
        changes["novel_elevations"] = tuple(changes["novel_elevations"])
    if stage == "trajectories" and "record_steps" in changes:
        changes["record_steps"] = tuple(changes["record_steps"])
    return dataclasses.replace(base, **changes)


def profile_from_dict(d: Mapping[str, Any], name: str | None = None) -> Profile:
    """``{"base": NAME, "<stage>": {field: value, ...}, ...}`` -> the base profile with those changes."""
    unknown = sorted(set(d) - {"base", "description", *SECTIONS})
    if unknown:
        raise ValueError(f"profile file: unknown keys {unknown}; expected 'base' and any of {list(SECTIONS)}")
    base_name = d.get("base")
    if base_name not in PROFILES:
        raise ValueError(f"profile file: 'base' must name one of {profile_names()}, got {base_name!r}")
    profile = PROFILES[base_name]
    changes = {stage: _changed(stage, getattr(profile, stage), d[stage]) for stage in SECTIONS if stage in d}
    return dataclasses.replace(
        profile, name=name or base_name, description=d.get("description", profile.description), **changes
    )


def get_profile(spec: str | os.PathLike | None = None) -> Profile:
    """A profile by name, or from a profile file (a path ending in ``.json``); ``None``: ``$DD3G_PROFILE``
    (default ``tiny``). A profile file's name is ``<base>:<file stem>``."""
    spec = os.environ.get(PROFILE_ENV, "tiny") if spec is None else spec
    text = str(spec)
    if text in PROFILES:
        return PROFILES[text]
    if text.endswith(".json"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"profile file {path} does not exist (${PROFILE_ENV} takes one of "
                f"{profile_names()} or the path of a .json profile file)"
            )
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"profile file {path} is not valid JSON: {e}") from None
        if not isinstance(d, Mapping):
            raise ValueError(f"profile file {path} must hold a JSON object")
        return profile_from_dict(d, name=f"{d.get('base')}:{path.stem}")
    raise ValueError(f"unknown profile {text!r}: choose one of {profile_names()} or give a .json profile file")
