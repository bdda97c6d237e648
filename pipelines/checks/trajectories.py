"""Checks of ``teacher_trajectories``, evaluated inside its materialization over the partitions of the run.

``counts_match_manifest``: shards validate; samples + teacher rejects = input images x noise draws.
``finite_and_shaped``: the first sample of each shard set has every field, finite, with the shapes
the teacher implies (:class:`dd3g_core.trajectories.SampleSpec`).
"""

from __future__ import annotations

import dagster as dg

from dd3g_core.shards import ShardSetSummary, ShardValidationError, iter_samples, validate_shards
from dd3g_core.trajectories import SampleSpec, TrajectoryCacheConfig

__all__ = ["TRAJECTORY_CHECKS", "check_trajectory_shard", "trajectory_check_results"]

TRAJECTORY_CHECKS = [
    dg.AssetCheckSpec(
        "counts_match_manifest",
        asset="teacher_trajectories",
        description="Shards validate; samples + teacher rejects = input images x noise draws.",
    ),
    dg.AssetCheckSpec(
        "finite_and_shaped",
        asset="teacher_trajectories",
        description="A sample per shard: all arrays finite, shapes as the teacher implies.",
    ),
]


def check_trajectory_shard(
    summary: ShardSetSummary, spec: SampleSpec, config: TrajectoryCacheConfig
) -> tuple[list[str], list[str]]:
    """Problems of one cached shard set: (count problems, sample problems)."""
    d = summary.directory
    try:
        validate_shards(d)
    except ShardValidationError as e:
        return [str(e)], []
    m = summary.manifest
    images = int(m.get("stats", {}).get("images", 0))
    teacher_rejects = sum(1 for r in m.get("rejects", []) if r.get("stage") == "teacher")
    counts = []
    if summary.num_samples + teacher_rejects != images * config.num_noise_draws:
        counts.append(
            f"{d}: {summary.num_samples} samples + {teacher_rejects} teacher rejects != "
            f"{images} images x {config.num_noise_draws} draws"
        )
    if summary.num_samples == 0:
        return counts, []
    sample = next(iter(iter_samples(d, validate=False)))
    return counts, [f"{d}/{p}" for p in spec.problems(sample)]


def trajectory_check_results(
    count_problems: list[str], sample_problems: list[str], samples: int
) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name="counts_match_manifest",
            passed=not count_problems,
            metadata={"problems": dg.MetadataValue.json(count_problems[:20]), "samples": samples},
        ),
        dg.AssetCheckResult(
            check_name="finite_and_shaped",
            passed=not sample_problems,
            metadata={"problems": dg.MetadataValue.json(sample_problems[:20])},
        ),
    ]
