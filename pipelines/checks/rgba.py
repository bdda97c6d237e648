"""Checks of ``rgba_images``, evaluated inside its materialization over the partitions of the run.

``shards_match_manifest`` (blocking): shards match the manifest (size, sha256), the samples read back
equal its count, accepted + rejected = attempted. ``alpha_coverage_in_range`` (not blocking): every
image's alpha coverage (share of pixels with alpha > 127) is within :data:`ALPHA_COVERAGE_RANGE`.

Why only the first blocks: a shard that does not match its manifest is corrupt data that must not flow
on; an image outside the coverage range is still a valid image (each image already passed the profile's
own coverage filters, ``QualityFilters.min_coverage``/``max_coverage``, before it was written), so the
coverage check is a warning about the data's distribution (a filter setting that drifted), not a guard.
A partition that fails a blocking check has its record marked (``failed_checks``), so it does not flow
into a later run either (``pipelines.io_managers``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import numpy as np

from dd3g_core.shards import ShardValidationError, iter_samples, validate_shards

__all__ = ["ALPHA_COVERAGE_RANGE", "RGBA_CHECKS", "check_rgba_shard", "rgba_check_results"]

ALPHA_COVERAGE_RANGE = (0.01, 0.9)

RGBA_CHECKS = [
    dg.AssetCheckSpec(
        "shards_match_manifest",
        asset="rgba_images",
        blocking=True,
        description="Blocking: every shard of each partition matches its manifest.json (size, sha256), the samples "
        "read back equal its count and accepted + rejected = attempted. A failing partition is not read downstream; "
        "`problems` names what is wrong.",
    ),
    dg.AssetCheckSpec(
        "alpha_coverage_in_range",
        asset="rgba_images",
        description=f"Warning, not blocking: every image's alpha coverage (share of pixels with alpha > 127) is within "
        f"{ALPHA_COVERAGE_RANGE}: an object neither lost nor filling the frame. `min`, `max`, `out_of_range`.",
    ),
]


def check_rgba_shard(directory: Path) -> tuple[list[str], list[float]]:
    """Problems found in one published rgba shard dir, and its images' alpha coverages."""
    problems: list[str] = []
    try:
        summary = validate_shards(directory)
    except ShardValidationError as e:
        return [str(e)], []
    coverages, count = [], 0
    try:
        for s in iter_samples(directory, validate=False):
            count += 1
            coverages.append(float((s["rgba.png"][..., 3] > 127).mean()))
    except Exception as e:  # noqa: BLE001 - an unreadable sample is what this check reports
        return [f"{directory}: sample {count} cannot be read: {type(e).__name__}: {e}"], coverages
    m = summary.manifest
    if count != summary.num_samples or sum(f["samples"] for f in m["files"]) != count:
        problems.append(f"{directory}: read {count} samples, manifest says {summary.num_samples}")
    if "attempted" in m and m.get("accepted", count) + m.get("num_rejected", 0) != m["attempted"]:
        problems.append(
            f"{directory}: accepted {m.get('accepted')} + rejected {m.get('num_rejected')} "
            f"!= attempted {m['attempted']}"
        )
    return problems, coverages


def rgba_check_results(directories: Mapping[str, Path]) -> tuple[list[dg.AssetCheckResult], dict[str, list[str]]]:
    """The check results over the partitions of a run (``{partition: directory}``), and the blocking
    checks each failing partition failed (``{partition: [check name]}``)."""
    problems, coverages, failed = [], [], {}
    for key, d in directories.items():
        p, cov = check_rgba_shard(Path(d))
        problems += p
        coverages += cov
        if p:
            failed[key] = ["shards_match_manifest"]
    lo, hi = ALPHA_COVERAGE_RANGE
    bad = [c for c in coverages if not lo <= c <= hi]
    results = [
        dg.AssetCheckResult(
            check_name="shards_match_manifest",
            passed=not problems,
            metadata={"problems": dg.MetadataValue.json(problems[:20]), "samples": len(coverages)},
        ),
        dg.AssetCheckResult(
            check_name="alpha_coverage_in_range",
            passed=bool(coverages) and not bad,
            metadata={
                "min": float(min(coverages, default=np.nan)),
                "max": float(max(coverages, default=np.nan)),
                "out_of_range": len(bad),
                "range": list(ALPHA_COVERAGE_RANGE),
            },
        ),
    ]
    return results, failed
