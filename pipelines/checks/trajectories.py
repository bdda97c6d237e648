"""Checks of ``teacher_trajectories``, evaluated inside its materialization over the partitions of the run.

Both are blocking (bad trajectories must not reach the student): a failure fails the step after the
results are reported, nothing downstream runs, and the failing partitions' records are marked
(``failed_checks``) so they do not flow into a later run either (``pipelines.io_managers``).

``counts_match_manifest``: shards validate; samples + teacher rejects = input images x noise draws.
``finite_and_shaped``: every sample of each shard set has every field, finite, with the shapes the
teacher implies (:class:`dd3g_core.trajectories.SampleSpec`); ``samples_checked`` says how many were
read (all of them: ~0.15 s per 128 tiny samples, measured, so no sampling is needed).
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from dd3g_core.shards import ShardSetSummary, ShardValidationError, iter_samples, validate_shards
from dd3g_core.trajectories import SampleSpec, TrajectoryCacheConfig

__all__ = ["TRAJECTORY_CHECKS", "check_trajectory_shard", "trajectory_check_results"]

TRAJECTORY_CHECKS = [
    dg.AssetCheckSpec(
        "counts_match_manifest",
        asset="teacher_trajectories",
        blocking=True,
        description="Blocking: each partition's shards validate against their manifest and samples + teacher "
        "rejects = input images x noise draws. A failing partition is not read downstream; `problems` names it.",
    ),
    dg.AssetCheckSpec(
        "finite_and_shaped",
        asset="teacher_trajectories",
        blocking=True,
        description="Blocking: every sample has every field, all arrays finite, with the shapes the teacher implies "
        "(SampleSpec). A failing partition is not read downstream; `problems` lists the first 20.",
    ),
]


def check_trajectory_shard(
    summary: ShardSetSummary, spec: SampleSpec, config: TrajectoryCacheConfig
) -> tuple[list[str], list[str], int]:
    """Problems of one cached shard set: (count problems, sample problems, samples checked)."""
    d = summary.directory
    try:
        validate_shards(d)
    except ShardValidationError as e:
        return [str(e)], [], 0
    m = summary.manifest
    stats = m.get("stats") if isinstance(m.get("stats"), dict) else {}
    images = int(stats.get("images", 0)) if isinstance(stats.get("images", 0), int) else 0
    rejects = m.get("rejects") if isinstance(m.get("rejects"), list) else []
    teacher_rejects = sum(1 for r in rejects if isinstance(r, dict) and r.get("stage") == "teacher")
    counts = []
    if summary.num_samples + teacher_rejects != images * config.num_noise_draws:
        counts.append(
            f"{d}: {summary.num_samples} samples + {teacher_rejects} teacher rejects != "
            f"{images} images x {config.num_noise_draws} draws"
        )
    problems, checked = [], 0
    try:
        for sample in iter_samples(d, validate=False):
            checked += 1
            problems += [f"{d}/{p}" for p in spec.problems(sample)]
    except Exception as e:  # noqa: BLE001 - an unreadable sample is what this check reports
        problems.append(f"{d}: sample {checked} cannot be read: {type(e).__name__}: {e}")
    if checked != summary.num_samples:
        problems.append(f"{d}: read {checked} samples, the manifest says {summary.num_samples}")
    return counts, problems, checked


def trajectory_check_results(
    checked: Mapping[str, tuple[list[str], list[str], int]],
) -> tuple[list[dg.AssetCheckResult], dict[str, list[str]]]:
    """The check results over the partitions of a run (``{partition: check_trajectory_shard(...)}``), and
    the blocking checks each failing partition failed (``{partition: [check name]}``)."""
    count_problems, sample_problems, samples, failed = [], [], 0, {}
    for key, (counts, problems, n) in checked.items():
        count_problems += counts
        sample_problems += problems
        samples += n
        names = [name for name, p in (("counts_match_manifest", counts), ("finite_and_shaped", problems)) if p]
        if names:
            failed[key] = names
    if not samples:
        sample_problems.append("no sample to check: every partition of this run is empty")
    results = [
        dg.AssetCheckResult(
            check_name="counts_match_manifest",
            passed=not count_problems,
            metadata={"problems": dg.MetadataValue.json(count_problems[:20]), "samples": samples},
        ),
        dg.AssetCheckResult(
            check_name="finite_and_shaped",
            passed=not sample_problems,
            metadata={
                "problems": dg.MetadataValue.json(sample_problems[:20]),
                "num_problems": len(sample_problems),
                "samples_checked": samples,
            },
        ),
    ]
    return results, failed
