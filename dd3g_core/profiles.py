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
gate). ``TeacherSettings``, ``EvaluationSettings``, ``StageLimits`` and ``PromotionSettings`` live in
:mod:`dd3g_core.profile_settings` (re-exported here); the three ``*Config`` classes live with their stages.
The Dagster pipeline reads it once (``pipelines.resources``); ``python -m dd3g_core.distill.train
--preset NAME`` takes the profile's ``distill`` settings.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .distill.config import DistillConfig
from .paths import TINY_TEACHER_DIR

# the settings classes have their own module (one concept per file); re-exported here, where callers import them
from .profile_settings import EvaluationSettings, PromotionSettings, StageLimits, TeacherSettings
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
        # the shipped student (the same recipe at 4500 steps on 4 draws: assets/profiles/tiny-long.json)
        # seen_refine: a CNN on II's cells for the seen view (docs/experiments/solid_student.md, session 17);
        # alpha_unmix_rings: the silhouette's coverage unmixed from the background, no light rim (session 18);
        # seen_view_weight 2: the input's view reproduced at 28 dB once its edge targets agree (sessions 18-19);
        # phase1_output_blocks 0 + gaussian_grid 8: phase 1 read after its middle block (4x4), 8x8 Gaussians per
        # token (the same 4096), phase 2 over 80 tokens instead of 272: the latency bar's architecture (session 20)
        distill=DistillConfig(
            steps=800,
            lr=1.2e-3,
            warmup_steps=30,
            implicit_ramp=(160, 480),
            model_overrides={"seen_refine": 32, "phase1_output_blocks": 0, "gaussian_grid": 8},
            alpha_unmix_rings=2,
            seen_view_weight=2.0,
        ),
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
            # the silhouette's coverage unmixed from ImageDream's white, as the fit ceiling's (distill.matte)
            alpha_unmix_rings=2,
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
