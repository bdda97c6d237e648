"""``teacher_trajectories``: the teacher's deterministic DDIM samples per RGBA image (stage 2).

Partition ``k`` caches rgba shard ``k`` (``IdentityPartitionMapping`` onto ``rgba_images``) into
``<data_root>/teacher_trajectories/<version>/shard-NNNNN/`` with
:func:`dd3g_core.trajectories.cache_shard`. The teacher is loaded once per run from
``settings.teacher_folder()`` (``$DD3G_TEACHER_PATH`` / ``teacher_path``, else the profile's
default); the asset also depends on the unpartitioned ``tiny_teacher`` asset, so ``distill``
produces the teacher before it is used. Config: the ``dd3g_core.trajectories.PRESETS`` entry of the
profile. Data versions and multi-partition runs work as for ``rgba_images``.

Checks (cheap: they read the manifests plus one sample per shard): ``counts_match_manifest``
(shards validate, samples + rejects = images x draws) and ``finite_and_shaped`` (that sample's
arrays are finite and have the shapes the teacher implies).
"""



import dagster as dg
import numpy as np

from dd3g_core import trajectories as traj
from dd3g_core.shards import ShardValidationError, iter_samples, validate_shards

from ..resources import DD3GSettings, shard_asset
from .rgba import content_hash, run_data_version, shard_indices

CODE_VERSION = f"traj-{traj.CODE_VERSION}.asset-1"


def _upstream_dir(settings: DD3GSettings, index: int):
    from dd3g_core import synthesis

    return synthesis.shard_dir(settings.root(), synthesis.preset(settings.profile), index)


def check_trajectory_shard(summary, teacher, config: traj.TrajectoryCacheConfig) -> tuple[list[str], list[str]]:
    """Problems of one cached shard set: (count problems, sample problems). Reads the manifest
    and the first sample only."""
    problems: list[str] = []
    d = summary.directory
    try:
        validate_shards(d)
    except ShardValidationError as e:
        return [str(e)], []
    m = summary.manifest
    images = int(m.get("stats", {}).get("images", 0))
    input_rejects = sum(1 for r in m.get("rejects", []) if r.get("stage") != "teacher")
    teacher_rejects = len(m.get("rejects", [])) - input_rejects
    if summary.num_samples + teacher_rejects != images * config.num_noise_draws:
        problems.append(f"{d}: {summary.num_samples} samples + {teacher_rejects} teacher rejects != "
                        f"{images} images x {config.num_noise_draws} draws")
    counts, problems = problems, []
    if summary.num_samples == 0:
        return counts, problems
    s = next(iter(iter_samples(d, validate=False)))
    f_, c, h, w = teacher.latent_shape()
    v = f_ - 1
    r = teacher.layout.resolution
    expected = {"noise.npy": (f_, c, h, w), "cameras.npy": (f_, teacher.cameras().embedding.shape[-1]),
                "viewmats.npy": (v, 4, 4), "ks.npy": (v, 3, 3),
                "xt.npy": (len(config.record_steps), f_, c, h, w)}
    for name, shape in expected.items():
        if name not in s:
            problems.append(f"{d}/{s['__key__']}: missing {name}")
        elif tuple(s[name].shape) != shape:
            problems.append(f"{d}/{s['__key__']}: {name} shape {tuple(s[name].shape)} != {shape}")
    views = s.get("views.npy")
    if views is None or views.ndim != 4 or views.shape[:2] != (v, 3) or views.shape[2] != views.shape[3]:
        problems.append(f"{d}/{s['__key__']}: views.npy shape {getattr(views, 'shape', None)} is not [{v}, 3, R, R]")
    elif views.shape[2] != r and teacher.teacher_id == "tiny":
        problems.append(f"{d}/{s['__key__']}: views are {views.shape[2]} px, the tiny teacher renders {r}")
    for name, arr in s.items():
        if name.endswith(".npy") and not np.isfinite(np.asarray(arr, dtype=np.float64)).all():
            problems.append(f"{d}/{s['__key__']}: {name} has non-finite values")
    return counts, problems


@shard_asset(
    deps=[dg.AssetDep("rgba_images", partition_mapping=dg.IdentityPartitionMapping()), dg.AssetDep("tiny_teacher")],
    code_version=CODE_VERSION,
    group_name="data",
    kinds={"webdataset", "pytorch"},
    check_specs=[
        dg.AssetCheckSpec("counts_match_manifest", asset="teacher_trajectories",
                          description="Shards validate; samples + teacher rejects = input images x noise draws."),
        dg.AssetCheckSpec("finite_and_shaped", asset="teacher_trajectories",
                          description="A sample per shard: all arrays finite, shapes as the teacher implies."),
    ],
    description="Teacher DDIM trajectories {II, N, C, OI, x_t} per RGBA image and noise draw, one shard per partition.",
)
def teacher_trajectories(context: dg.AssetExecutionContext, settings: DD3GSettings) -> dg.MaterializeResult:
    if settings.profile not in traj.PRESETS:
        raise ValueError(f"no trajectory preset for profile {settings.profile!r}")
    config = traj.PRESETS[settings.profile]
    root = settings.root()
    folder = settings.teacher_folder()
    teacher = settings.load_teacher()
    context.log.info(f"teacher {teacher.teacher_id} from {folder} (config hash {teacher.config_hash()})")
    from dd3g_core import synthesis

    num = synthesis.preset(settings.profile).num_shards
    hashes, hits, total, rejects, count_problems, shape_problems = {}, [], 0, 0, [], []
    version = None
    for key, index in shard_indices(context, num):
        summary, cache_hit = traj.cache_shard(root, _upstream_dir(settings, index), teacher, config, index)
        version = summary.manifest.get("stage_version")
        h = content_hash(summary)
        hashes[key] = h
        hits.append(cache_hit)
        total += summary.num_samples
        n_rej = len(summary.manifest.get("rejects", []))
        rejects += n_rej
        cp, sp = check_trajectory_shard(summary, teacher, config)
        count_problems += cp
        shape_problems += sp
        stats = summary.manifest.get("stats", {})
        context.log.info(f"shard {key}: {'reused' if cache_hit else 'cached'} {summary.num_samples} samples "
                         f"({n_rej} rejects) in {summary.directory}")
        context.add_asset_metadata({
            "path": dg.MetadataValue.path(str(summary.directory)),
            "num_samples": summary.num_samples,
            "num_rejects": n_rej,
            "rejects": dg.MetadataValue.json(summary.manifest.get("rejects", [])[:20]),
            "cache_hit": cache_hit,
            "content_hash": h,
            "teacher_seconds": float(stats.get("teacher_seconds", 0.0)),
        }, partition_key=key)
    return dg.MaterializeResult(
        data_version=run_data_version(hashes),
        metadata={
            "stage_version": str(version),
            "teacher_path": dg.MetadataValue.path(str(folder)),
            "teacher_config_hash": teacher.config_hash(),
            "partitions": len(hashes),
            "num_samples_total": total,
            "num_rejects_total": rejects,
            "cache_hit": all(hits),
            "config": dg.MetadataValue.json(config.to_dict()),
        },
        check_results=[
            dg.AssetCheckResult(check_name="counts_match_manifest", passed=not count_problems,
                                metadata={"problems": dg.MetadataValue.json(count_problems[:20]), "samples": total}),
            dg.AssetCheckResult(check_name="finite_and_shaped", passed=not shape_problems,
                                metadata={"problems": dg.MetadataValue.json(shape_problems[:20])}),
        ],
    )
