"""One PEPD training run launched from an asset: shared by ``pepd_student`` and ``student_ablations``.

:func:`resolve_base_config` turns the run config (:class:`StudentTrainingConfig`: the profile's ``distill``
or a JSON run config, plus ``overrides``) and the input records into the base :class:`DistillConfig` and
the trajectories directory. :func:`student_version` is the identity of a run (this code's version, the
config's identity and step count, the teacher's content hash, the trajectories' version).
:func:`train_student` owns ``<run_dir>``: a finished run whose files match its export manifest is a
cache hit (:mod:`pipelines.export_manifest`); anything else launches ``accelerate launch -m
pipelines.pipes_train`` through Dagster Pipes (the trainer resumes from its newest checkpoint), then
writes the export manifest. It returns the record passed on (``{path: <run>/pepd, run_dir, trajectories,
weights_sha256, version}``), the metadata to report and the data version (the exported weights' hash).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import pydantic

from dd3g_core.io import atomic_write_json, stable_hash

from .export_manifest import EXPORT_MANIFEST, finished_run_problem, read_result, write_export_manifest
from .resources import DD3GSettings

if TYPE_CHECKING:
    from dd3g_core.distill import DistillConfig

__all__ = [
    "CODE_VERSION",
    "GRAPH_FIELDS",
    "StudentTrainingConfig",
    "TrainedStudent",
    "launch_command",
    "resolve_base_config",
    "student_version",
    "student_version_inputs",
    "train_student",
    "trajectories_content",
    "trajectories_dir",
]

# Part of every run's version: pepd_student's on-disk runs are keyed by "2", so changing it retrains them.
CODE_VERSION = "2"
GRAPH_FIELDS = ("teacher", "trajectories", "out")  # DistillConfig fields the graph decides


class StudentTrainingConfig(dg.Config):
    """Run config of an asset that trains PEPD (the fields pepd_student has always had)."""

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


@dataclass(frozen=True)
class TrainedStudent:
    record: dict[str, Any]  # what the asset passes on
    metadata: dict[str, Any]  # the trainer's report (or the cached one) plus cache_hit, command, version, run_dir
    data_version: str  # the exported weights' hash


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


def resolve_base_config(
    config: StudentTrainingConfig, settings: DD3GSettings, teacher: dict, teacher_trajectories: dict
) -> tuple[DistillConfig, Path]:
    """The run's DistillConfig before the graph fills in teacher/trajectories/out, and the trajectories
    directory; refuses overrides of the graph's fields and a teacher folder that no longer matches its hash."""
    from dd3g_core.distill import apply_overrides, load_config
    from dd3g_core.teacher import verify_teacher_folder

    # before anything reads the records: a wrong override is the user's first error to see
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
    return base, trajectories_dir(teacher_trajectories)


def student_version_inputs(
    code: str, cfg: DistillConfig, teacher: dict, traj_dir: Path, data: str | None = None
) -> dict[str, Any]:
    """What a run's version hashes. pepd_student's cached runs are keyed by exactly this dict: keep it.
    ``data``: :func:`trajectories_content`, given only when the trajectories' version does not pin their
    content (a ``folder`` RGBA source); the other sources' versions are unchanged by it."""
    inputs = {
        "code": code,
        "config": cfg.replace(teacher=None, trajectories="").identity(),
        "steps": cfg.steps,
        "teacher": teacher["content_hash"],
        "trajectories": traj_dir.name,
    }
    return inputs if data is None else {**inputs, "data": data}


def trajectories_content(settings: DD3GSettings, records: dict[str, dict]) -> str | None:
    """The content of the trajectory partitions a run reads, when their version directory does not pin it.

    A ``folder`` RGBA source keeps its stage version (and so the trajectories') when images are added,
    so that unchanged partitions stay cache hits (``dd3g_core.synthesis.folder``); a student trained on
    the old images must then not be a cache hit of the new ones: its version takes the partitions'
    content hashes. ``None`` for the generated sources, whose versions already pin their content."""
    if settings.profile_config().rgba.generator != "folder":
        return None
    return stable_hash(sorted((k, r["content_hash"]) for k, r in records.items()))


def student_version(inputs: dict[str, Any]) -> str:
    return stable_hash(inputs, length=16)


def _report(metadata: dict) -> dict:
    out = dict(metadata)
    out["checkpoint"] = dg.MetadataValue.path(str(metadata.get("checkpoint", "")))
    out["loss_curve"] = dg.MetadataValue.json(metadata.get("loss_curve", []))
    out["parameters"] = dg.MetadataValue.json(metadata.get("parameters", {}))
    return out


def train_student(
    context: dg.AssetExecutionContext,
    config: StudentTrainingConfig,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    base: DistillConfig,
    teacher: dict,
    traj_dir: Path,
    run_dir: Path,
    version: str,
) -> TrainedStudent:
    """Train ``base`` (with the graph's teacher/trajectories/out) into ``run_dir``, or reuse a verified finished run."""
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
    metadata = {**metadata, "version": version, "run_dir": dg.MetadataValue.path(str(run_dir))}
    return TrainedStudent(record=record, metadata=metadata, data_version=data_version)
