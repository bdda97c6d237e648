"""``teacher_trajectories``: the teacher's deterministic DDIM samples per RGBA image (stage 2).

Partition ``k`` caches the rgba shard set that ``rgba_images`` partition ``k`` recorded into
``<data_root>/teacher_trajectories/<version>/shard-NNNNN/`` (``dd3g_core.trajectories.cache_shard``),
with the teacher folder the ``teacher`` asset recorded (loaded once per run through
``dd3g_core.teacher.load_teacher``, which checks the recorded content hash). Settings: the profile's
``trajectories``. Records, data versions and multi-partition runs work as for ``rgba_images``.
Checks: :mod:`pipelines.checks.trajectories` (blocking). In the UI each partition shows a few samples'
input image and the teacher's views OI (``preview``, :func:`pipelines.preview.trajectories_preview`).

A partition that rejects more than the profile's ``limits.trajectories_max_reject_share`` of its
samples, or accepts none (a teacher with NaN weights rejects everything as non-finite), is not
published; the other partitions go on, then the step fails naming each failed partition, its counts
and top reasons.
"""

import dagster as dg

from dd3g_core import trajectories as traj
from dd3g_core.shards import content_hash
from dd3g_core.shards.rules import RejectShareError
from dd3g_core.teacher import load_teacher

from ..checks import TRAJECTORY_CHECKS, trajectory_check_results
from ..checks.trajectories import check_trajectory_shard
from ..io_managers import mark_failed_checks
from ..partitions import PartitionFailures, run_data_version, shard_asset, shard_indices
from ..preview import trajectories_preview_markdown
from ..resources import DD3GSettings

CODE_VERSION = f"traj-{traj.CODE_VERSION}.asset-2"


@shard_asset(
    ins={"rgba_images": dg.AssetIn(partition_mapping=dg.IdentityPartitionMapping()), "teacher": dg.AssetIn()},
    code_version=CODE_VERSION,
    group_name="data",
    kinds={"webdataset", "pytorch"},
    check_specs=TRAJECTORY_CHECKS,
    description="Stage 2: the teacher's deterministic DDIM samples {II, N, C, OI, x_t} per RGBA image and noise draw,"
    " one shard set per partition in `<data_root>/teacher_trajectories/<version>/shard-NNNNN/`. Look at each "
    "partition's `preview` ([Show Markdown]: input image, then the teacher's views OI: what the student learns to "
    "reproduce), `num_rejects` / `rejects`, `teacher_seconds`, and the blocking checks.",
)
def teacher_trajectories(context: dg.AssetExecutionContext, settings: DD3GSettings, rgba_images: dict, teacher: dict):
    profile = settings.profile_config()
    config = profile.trajectories
    root = settings.root()
    model = load_teacher(
        teacher["path"],
        device=profile.teacher.device,
        content_hash=teacher["content_hash"],
        hash_cache=settings.hash_cache(),
    )
    context.log.info(
        f"teacher {model.teacher_id} from {teacher['path']} (config hash {model.config_hash()}) on {model.device}"
    )
    spec = traj.SampleSpec.for_teacher(model, len(config.record_steps))
    records, hits, rejects, checked = {}, [], 0, {}
    failures = PartitionFailures("teacher_trajectories")
    for key, index in shard_indices(context, profile.num_shards):
        try:
            summary, cache_hit = traj.cache_shard(
                root,
                rgba_images[key]["path"],
                model,
                config,
                index,
                max_reject_share=profile.limits.trajectories_max_reject_share,
                log=context.log.info,
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
        n_rej = len(summary.manifest.get("rejects", []))
        rejects += n_rej
        checked[key] = check_trajectory_shard(summary, spec, config)
        stats = summary.manifest.get("stats", {})
        context.log.info(
            f"shard {key}: {'reused' if cache_hit else 'cached'} {summary.num_samples} samples "
            f"({n_rej} rejects) in {summary.directory}"
        )
        context.add_asset_metadata(
            {
                "path": dg.MetadataValue.path(str(summary.directory)),
                "num_samples": summary.num_samples,
                "num_rejects": n_rej,
                "rejects": dg.MetadataValue.json(summary.manifest.get("rejects", [])[:20]),
                "cache_hit": cache_hit,
                "content_hash": h,
                "teacher_seconds": float(stats.get("teacher_seconds", 0.0)),
                "preview": trajectories_preview_markdown(summary.directory, key),
            },
            partition_key=key,
        )
    failures.raise_if_any(done=len(records))
    check_results, failed = trajectory_check_results(checked)
    total = sum(r["num_samples"] for r in records.values())
    versions = sorted({str(r["stage_version"]) for r in records.values()})
    return dg.MaterializeResult(
        value=mark_failed_checks(records, failed),
        data_version=run_data_version({k: r["content_hash"] for k, r in records.items()}),
        metadata={
            "stage_version": versions[0] if len(versions) == 1 else dg.MetadataValue.json(versions),
            "teacher_path": dg.MetadataValue.path(teacher["path"]),
            "teacher_config_hash": model.config_hash(),
            "partitions": len(records),
            "num_samples_total": total,
            "num_rejects_total": rejects,
            "cache_hit": all(hits),
            "config": dg.MetadataValue.json(config.to_dict()),
        },
        check_results=check_results,
    )
