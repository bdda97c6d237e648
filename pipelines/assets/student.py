"""``pepd_student``: distil the teacher's cached trajectories into PEPD (group ``student``).

Training runs as a subprocess through Dagster Pipes — ``python -m accelerate.commands.launch
[--multi_gpu --num_processes N | --config_file F] -m pipelines.pipes_train --config RUN.json`` (the
trainer ``dd3g_core.distill.train`` with a Pipes reporter on rank 0) — so one asset can own N GPUs
(or N gloo processes on a CPU box). Rank 0 streams its log lines to the run log and reports the
materialization: loss curve, checkpoint path, parameter counts, skipped samples, and the exported
weights' hash as the data version.

Inputs: the ``teacher`` record (the folder the trainer loads) and the ``teacher_trajectories``
records of every partition (the shard sets it reads). Settings: the profile's ``distill`` (or a
JSON run config), plus ``overrides``. The run directory is ``<data_root>/pepd_student/<version>/``,
``version`` = hash of this asset's code version, the resolved config's identity, the teacher's
content hash and the trajectories' version. ``<run>/distill_config.json`` is the exact config the
trainer ran with. A finished run of the same version is a cache hit (no launch) only if every file it
vouches for still matches ``<run>/export_manifest.json`` (sizes, sha256: :mod:`pipelines.export_manifest`);
otherwise, and for an unfinished run, the trainer is launched and resumes from its newest checkpoint, so
a killed run loses at most one checkpoint interval and a damaged export is rebuilt.
The record passed on: ``{path: <run>/pepd, run_dir, trajectories, weights_sha256, version}``.
Checks: :mod:`pipelines.checks.student`.
"""

import os
import sys
from pathlib import Path

import dagster as dg
import pydantic

from dd3g_core.io import atomic_write_json, stable_hash

from ..export_manifest import EXPORT_MANIFEST, finished_run_problem, read_result, write_export_manifest
from ..resources import DD3GSettings

CODE_VERSION = "2"
GRAPH_FIELDS = ("teacher", "trajectories", "out")  # DistillConfig fields the graph decides


class PEPDStudentConfig(dg.Config):
    config_file: str = ""  # a JSON run config (DistillConfig fields, may name a "preset"); default: the profile's
    overrides: list[str] = []  # DistillConfig overrides, "key=value" (e.g. "steps=3000")
    num_processes: int = 1  # > 1: --multi_gpu (GPUs, or gloo processes on CPU)
    accelerate_config: str = (
        ""  # an `accelerate launch --config_file` YAML (assets/accelerate/); wins over num_processes
    )
    threads_per_process: int = 0  # OMP/torch threads per process on CPU (0: cores / processes)

    @pydantic.field_validator("num_processes")
    @classmethod
    def _at_least_one_process(cls, value: int) -> int:
        if value < 1:
            raise ValueError(
                f"num_processes must be >= 1 (1: one process; N > 1: N GPUs or gloo processes), got {value}"
            )
        return value

    @pydantic.field_validator("threads_per_process")
    @classmethod
    def _threads_not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"threads_per_process must be >= 0 (0: cores / processes), got {value}")
        return value


def launch_command(config_path: Path, num_processes: int, accelerate_config: str) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", accelerate_config]
    elif num_processes > 1:
        cmd += ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1"]
    else:
        cmd += ["--num_processes", "1", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"] if not accelerate_config else []
    return cmd + ["-m", "pipelines.pipes_train", "--config", str(config_path)]


def trajectories_dir(records: dict[str, dict]) -> Path:
    """The one version directory holding every partition's shard set."""
    parents = {str(Path(r["path"]).parent) for r in records.values()}
    if len(parents) != 1:
        raise ValueError(
            f"teacher_trajectories partitions come from different versions {sorted(parents)}: "
            f"materialize all its partitions with the same teacher and settings"
        )
    return Path(parents.pop())


def _report(metadata: dict) -> dict:
    out = dict(metadata)
    out["checkpoint"] = dg.MetadataValue.path(str(metadata.get("checkpoint", "")))
    out["loss_curve"] = dg.MetadataValue.json(metadata.get("loss_curve", []))
    out["parameters"] = dg.MetadataValue.json(metadata.get("parameters", {}))
    return out


@dg.asset(
    ins={"teacher": dg.AssetIn(), "teacher_trajectories": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    code_version=CODE_VERSION,
    group_name="student",
    kinds={"pytorch"},
    description="PEPD student distilled from the teacher trajectories (Accelerate via Dagster Pipes).",
)
def pepd_student(
    context: dg.AssetExecutionContext,
    config: PEPDStudentConfig,
    settings: DD3GSettings,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    teacher: dict,
    teacher_trajectories: dict,
):
    from dd3g_core.distill import apply_overrides, load_config
    from dd3g_core.teacher import verify_teacher_folder

    fixed = sorted({o.split("=", 1)[0] for o in config.overrides} & set(GRAPH_FIELDS))
    if fixed:
        raise ValueError(
            f"overrides {fixed} come from the graph (the teacher and teacher_trajectories records, the data root): "
            f"give another teacher through the settings resource's teacher_path / $DD3G_TEACHER_PATH instead"
        )
    profile = settings.profile_config()
    base = load_config(config.config_file) if config.config_file else profile.distill
    base = apply_overrides(base, list(config.overrides))
    verify_teacher_folder(teacher["path"], teacher["content_hash"], settings.hash_cache())  # the trainer loads it
    traj_dir = trajectories_dir(teacher_trajectories)
    version = stable_hash(
        {
            "code": CODE_VERSION,
            "config": base.replace(teacher=None, trajectories="").identity(),
            "steps": base.steps,
            "teacher": teacher["content_hash"],
            "trajectories": traj_dir.name,
        },
        length=16,
    )
    run_dir = settings.root() / "pepd_student" / version
    cfg = base.replace(teacher=teacher["path"], trajectories=str(traj_dir), out=str(run_dir))
    record = {"path": str(run_dir / "pepd"), "run_dir": str(run_dir), "trajectories": str(traj_dir), "version": version}
    result, why = finished_run_problem(run_dir, cfg.steps)
    if result is not None:
        context.log.info(f"cache hit: {run_dir} holds a finished run of this version, its files verified")
        metadata = {**_report(result["metadata"]), "cache_hit": True}
        data_version = result["data_version"]
    else:
        if (run_dir / "result.json").exists() or (run_dir / EXPORT_MANIFEST).exists():
            context.log.warning(f"not a cache hit: {run_dir}: {why}; the trainer resumes and exports again")
        (run_dir / EXPORT_MANIFEST).unlink(missing_ok=True)  # vouches for nothing until the new export is done
        config_path = run_dir / "distill_config.json"
        atomic_write_json(config_path, cfg.to_dict())
        cmd = launch_command(config_path, config.num_processes, config.accelerate_config)
        context.log.info("launching: " + " ".join(cmd))
        env = dict(os.environ)
        threads = config.threads_per_process or max(1, (os.cpu_count() or 1) // max(1, config.num_processes))
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env["PYTHONUNBUFFERED"] = "1"
        reported = pipes_subprocess_client.run(command=cmd, context=context, env=env).get_materialize_result()
        result, why = read_result(run_dir, cfg.steps)
        if result is None:
            raise RuntimeError(f"the trainer exited without a finished run in {run_dir}: {why}")
        write_export_manifest(run_dir)
        metadata = {**(reported.metadata or {}), "cache_hit": False, "command": " ".join(cmd)}
        data_version = reported.data_version.value if reported.data_version else result["data_version"]
    record["weights_sha256"] = result["metadata"]["weights_sha256"]
    return dg.MaterializeResult(
        value=record,
        metadata={**metadata, "version": version, "run_dir": dg.MetadataValue.path(str(run_dir))},
        data_version=dg.DataVersion(data_version),
    )
