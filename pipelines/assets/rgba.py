"""``rgba_images``: RGBA object images as webdataset shards (stage 1), one partition per shard.

Each partition writes ``<data_root>/rgba_images/<version>/shard-NNNNN/`` with
``dd3g_core.synthesis.synthesize_shard`` under the profile's ``rgba`` settings (procedural objects
on a colour key in tiny/smoke, SDXL + rembg from local files in full; the user's own images with a
profile file's ``{"rgba": {"generator": "folder", "folder": "/path/or/glob"}}``, docs/own_data.md). Its
record (the value passed to ``teacher_trajectories``) is ``{partition: {path, content_hash, stage_version,
num_samples}}``.

Data version: the hash of the partition's shard sha256s (its manifest); a run over several
partitions gets one data version for all of them, and each partition's own hash is in its
``content_hash`` metadata. Checks: :mod:`pipelines.checks.rgba`. In the UI each partition shows its
first images on white and on black (``preview``, :func:`pipelines.preview.rgba_preview`).

A partition that rejects more than the profile's ``limits.rgba_max_reject_share`` of its images, or
accepts none, is not published (``dd3g_core.shards.rules.RejectShareError``); the other partitions
of the run go on, then the step fails naming each failed partition, its counts and top reasons.
"""

import dataclasses
import json
from pathlib import Path

import dagster as dg

from dd3g_core import synthesis
from dd3g_core.shards import content_hash
from dd3g_core.shards.rules import RejectShareError

from ..checks import RGBA_CHECKS, rgba_check_results
from ..io_managers import mark_failed_checks
from ..partitions import PartitionFailures, run_data_version, shard_asset, shard_indices
from ..preview import rgba_preview_markdown
from ..resources import DD3GSettings

CODE_VERSION = f"rgba-{synthesis.CODE_VERSION}.asset-1"


@shard_asset(
    code_version=CODE_VERSION,
    group_name="data",
    kinds={"webdataset"},
    check_specs=RGBA_CHECKS,
    description="Stage 1: RGBA object images (procedural objects on a colour key in tiny/smoke, SDXL + rembg in "
    "full, or your own images: a profile's rgba.generator 'folder'), one webdataset shard set per partition in "
    "`<data_root>/rgba_images/<version>/shard-NNNNN/` (tar files + manifest.json). Look at each partition's "
    "`preview` ([Show Markdown]: its first 8 images on white, then on black:"
    " clean silhouettes, objects whole and centred), `num_samples` / `num_rejected`, and the checks.",
)
def rgba_images(context: dg.AssetExecutionContext, settings: DD3GSettings):
    profile = settings.profile_config()
    config = profile.rgba.resolved()  # full: checks the SDXL / rembg files first
    root = settings.root()
    records, hits, failures = {}, [], PartitionFailures("rgba_images")
    for key, index in shard_indices(context, config.num_shards):
        try:
            summary, cache_hit = synthesis.synthesize_shard(
                root, config, index, max_reject_share=profile.limits.rgba_max_reject_share, log=context.log.info
            )
        except RejectShareError as e:
            context.log.error(str(e))
            failures.add(key, e)
            continue
        h = content_hash(summary)
        records[key] = {
            "path": str(summary.directory),
            "content_hash": h,
            "num_samples": summary.num_samples,
            "stage_version": summary.manifest.get("stage_version"),
        }
        hits.append(cache_hit)
        context.log.info(
            f"shard {key}: {'reused' if cache_hit else 'wrote'} {summary.num_samples} samples in {summary.directory}"
        )
        context.add_asset_metadata(
            {
                "path": dg.MetadataValue.path(str(summary.directory)),
                "num_samples": summary.num_samples,
                "num_rejected": int(summary.manifest.get("num_rejected", len(summary.manifest.get("rejected", [])))),
                "cache_hit": cache_hit,
                "content_hash": h,
                "preview": rgba_preview_markdown(summary.directory, key),
            },
            partition_key=key,
        )
    failures.raise_if_any(done=len(records))
    check_results, failed = rgba_check_results({k: Path(r["path"]) for k, r in records.items()})
    metadata = {
        "stage_version": synthesis.stage_version(config),
        "partitions": len(records),
        "num_samples_total": sum(r["num_samples"] for r in records.values()),
        "cache_hit": all(hits),
        "config": dg.MetadataValue.json(json.loads(json.dumps(dataclasses.asdict(config), default=str))),
    }
    return dg.MaterializeResult(
        value=mark_failed_checks(records, failed),
        data_version=run_data_version({k: r["content_hash"] for k, r in records.items()}),
        metadata=metadata,
        check_results=check_results,
    )
