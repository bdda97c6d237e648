"""``rgba_images``: RGBA object images as webdataset shards (stage 1), one partition per shard.

Partitions: :data:`pipelines.resources.SHARD_PARTITIONS` (``"00000"`` .. one per shard of the
profile's ``dd3g_core.synthesis`` preset). Each partition is an independent run writing
``<data_root>/rgba_images/<version>/shard-NNNNN/`` (``synthesize_shard``); a run may also cover a
range of partitions (``BackfillPolicy.single_run``: one step loops over ``context.partition_keys``).

Data version: the hash of the partition's shard sha256s (its manifest). A run over several
partitions gets one data version from Dagster for all of them (the hash of the per-partition
hashes, in key order); every partition's own hash is in its ``content_hash`` metadata.
Checks (evaluated inside the materialisation, over the partitions of the run):
``shards_match_manifest`` (size/sha256, samples read back = the manifest's count, accepted +
rejected = attempted) and
``alpha_coverage_in_range`` (every image's alpha coverage within :data:`ALPHA_COVERAGE_RANGE`).
"""


import numpy as np


import dagster as dg

from dd3g_core import synthesis
from dd3g_core.io import stable_hash
from dd3g_core.shards import ShardSetSummary, ShardValidationError, iter_samples, validate_shards

from ..preview import image_markdown
from ..resources import DD3GSettings, shard_asset

CODE_VERSION = f"rgba-{synthesis.CODE_VERSION}.asset-1"
ALPHA_COVERAGE_RANGE = (0.01, 0.9)  # share of pixels with alpha > 127 in a published image


def shard_indices(context: dg.AssetExecutionContext, num_shards: int) -> list[tuple[str, int]]:
    """The (partition key, shard index) pairs of this run, checked against the profile."""
    out = []
    for key in context.partition_keys:
        index = int(key)
        if not 0 <= index < num_shards:
            raise ValueError(f"partition {key!r} does not exist in this profile ({num_shards} shards): the "
                             f"definitions were loaded with another DD3G_PROFILE than the settings resource")
        out.append((key, index))
    return out


def content_hash(summary: ShardSetSummary) -> str:
    return stable_hash([f["sha256"] for f in summary.manifest["files"]])


def run_data_version(hashes: dict[str, str]) -> dg.DataVersion:
    """One partition: its content hash; several: the hash of (key, hash) pairs (Dagster stamps one
    data version on every partition a step materialises)."""
    if len(hashes) == 1:
        return dg.DataVersion(next(iter(hashes.values())))
    return dg.DataVersion(stable_hash(sorted(hashes.items())))


def _config(settings: DD3GSettings):
    return synthesis.preset(settings.profile)


def check_rgba_shard(directory) -> tuple[list[str], list[float]]:
    """Problems found in one published rgba shard dir, and its images' alpha coverages."""
    problems: list[str] = []
    try:
        summary = validate_shards(directory)
    except ShardValidationError as e:
        return [str(e)], []
    coverages, count = [], 0
    for s in iter_samples(directory, validate=False):
        count += 1
        coverages.append(float((s["rgba.png"][..., 3] > 127).mean()))
    m = summary.manifest
    if count != summary.num_samples or sum(f["samples"] for f in m["files"]) != count:
        problems.append(f"{directory}: read {count} samples, manifest says {summary.num_samples}")
    if "attempted" in m and m.get("accepted", count) + m.get("num_rejected", 0) != m["attempted"]:
        problems.append(f"{directory}: accepted {m.get('accepted')} + rejected {m.get('num_rejected')} "
                        f"!= attempted {m['attempted']}")
    return problems, coverages


@shard_asset(
    code_version=CODE_VERSION,
    group_name="data",
    kinds={"webdataset"},
    check_specs=[
        dg.AssetCheckSpec("shards_match_manifest", asset="rgba_images",
                          description="Shards match the manifest (size, sha256) and the samples read back = its count."),
        dg.AssetCheckSpec("alpha_coverage_in_range", asset="rgba_images",
                          description=f"Every image's alpha coverage is within {ALPHA_COVERAGE_RANGE}."),
    ],
    description="RGBA object images (procedural world in tiny/smoke, SDXL + rembg in full), one shard per partition.",
)
def rgba_images(context: dg.AssetExecutionContext, settings: DD3GSettings) -> dg.MaterializeResult:
    config = _config(settings)
    root = settings.root()
    hashes: dict[str, str] = {}
    hits, total, problems, coverages = [], 0, [], []
    previews = None
    for key, index in shard_indices(context, config.num_shards):
        summary, cache_hit = synthesis.synthesize_shard(root, config, index)
        h = content_hash(summary)
        hashes[key] = h
        hits.append(cache_hit)
        total += summary.num_samples
        context.log.info(f"shard {key}: {'reused' if cache_hit else 'wrote'} {summary.num_samples} samples "
                         f"in {summary.directory}")
        p, cov = check_rgba_shard(summary.directory)
        problems += p
        coverages += cov
        context.add_asset_metadata({
            "path": dg.MetadataValue.path(str(summary.directory)),
            "num_samples": summary.num_samples,
            "num_rejected": int(summary.manifest.get("num_rejected", len(summary.manifest.get("rejected", [])))),
            "cache_hit": cache_hit,
            "content_hash": h,
        }, partition_key=key)
        if previews is None and summary.num_samples:
            previews = image_markdown(synthesis.preview_grid(summary, 8), f"shard {key}")
    lo, hi = ALPHA_COVERAGE_RANGE
    bad_cov = [c for c in coverages if not lo <= c <= hi]
    metadata = {
        "stage_version": synthesis.stage_version(config),
        "partitions": len(hashes),
        "num_samples_total": total,
        "cache_hit": all(hits),
        "config": dg.MetadataValue.json(_jsonable(config)),
    }
    if previews is not None:
        metadata["preview"] = previews
    return dg.MaterializeResult(
        data_version=run_data_version(hashes),
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(check_name="shards_match_manifest", passed=not problems,
                                metadata={"problems": dg.MetadataValue.json(problems[:20]), "samples": total}),
            dg.AssetCheckResult(check_name="alpha_coverage_in_range", passed=bool(coverages) and not bad_cov,
                                metadata={"min": float(min(coverages, default=np.nan)),
                                          "max": float(max(coverages, default=np.nan)),
                                          "out_of_range": len(bad_cov), "range": list(ALPHA_COVERAGE_RANGE)}),
        ],
    )


def _jsonable(config) -> dict:
    import dataclasses
    import json

    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
