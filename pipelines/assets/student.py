"""``pepd_student``: distil the teacher's cached trajectories into PEPD (group ``student``).

Training runs as a subprocess through Dagster Pipes — ``python -m accelerate.commands.launch
[--multi_gpu --num_processes N | --config_file F] -m pipelines.pipes_train --config C --set …``
(``dd3g_core.train`` with a Pipes reporter on rank 0) — so
one asset can own N GPUs (or N gloo processes on a CPU box). Rank 0 of the trainer streams its
log lines to the run log and reports the materialization: loss curve, checkpoint path,
parameter counts, skipped samples, and the exported weights' hash as the data version.

Versioning: the run directory is ``<data_root>/pepd_student/<version>/`` with ``version`` =
hash of this asset's code version, the resolved ``DistillConfig.identity()`` and the
``teacher_trajectories`` stage version (which itself covers the teacher's weights). A finished
run of the same version is a cache hit (no launch); an unfinished one resumes from its newest
checkpoint, so a killed run loses at most one checkpoint interval.

Checks: ``student_renders_finite`` (the exported model loads, and a forward on one cached sample
gives finite Gaussians) and ``student_beats_copy_input`` (severity WARN: on 8 held-out procedural
objects the student's renders agree with the teacher's OI better than copying the input does;
``dd3g_core.evaluation``, the numbers go to the check's metadata; ``benchmarks/distill_quality.py``
is the full version).
"""

import json
import os
import sys
from pathlib import Path

import dagster as dg

from dd3g_core.io import stable_hash

from ..resources import DD3GSettings

CODE_VERSION = "1"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "assets" / "configs"


class PEPDStudentConfig(dg.Config):
    config_file: str = ""  # default: assets/configs/distill_<profile>.json
    overrides: list[str] = []  # DistillConfig overrides, "key=value" (e.g. "steps=3000")
    num_processes: int = 1  # > 1: --multi_gpu (GPUs, or gloo processes on CPU)
    accelerate_config: str = ""  # an `accelerate launch --config_file` YAML (assets/accelerate/); wins over num_processes
    threads_per_process: int = 0  # OMP/torch threads per process on CPU (0: cores / processes)


def _trajectories_dir(settings: DD3GSettings, teacher) -> Path:
    from dd3g_core import trajectories as traj

    root = settings.root() / traj.STAGE
    config = traj.PRESETS[settings.profile]
    versions = {traj.stage_dir(settings.root(), config, teacher.config_hash(), _rgba_version(settings, i)).name
                for i in range(_num_shards(settings))}
    if len(versions) != 1:
        raise ValueError(f"teacher_trajectories shards have different versions {sorted(versions)}")
    path = root / versions.pop()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist: materialize teacher_trajectories first")
    return path


def _num_shards(settings: DD3GSettings) -> int:
    from dd3g_core import synthesis

    return synthesis.preset(settings.profile).num_shards


def _rgba_version(settings: DD3GSettings, index: int) -> str:
    from dd3g_core import synthesis
    from dd3g_core import trajectories as traj

    return traj.upstream_version(synthesis.shard_dir(settings.root(), synthesis.preset(settings.profile), index))


def launch_command(config_path: Path, overrides: list[str], num_processes: int, accelerate_config: str) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", accelerate_config]
    elif num_processes > 1:
        cmd += ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1"]
    else:
        cmd += ["--num_processes", "1", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"] if not accelerate_config else []
    cmd += ["-m", "pipelines.pipes_train", "--config", str(config_path)]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


@dg.asset(
    deps=[dg.AssetDep("teacher_trajectories", partition_mapping=dg.AllPartitionMapping()), dg.AssetDep("tiny_teacher")],
    code_version=CODE_VERSION,
    group_name="student",
    kinds={"pytorch"},
    check_specs=[dg.AssetCheckSpec("student_renders_finite", asset="pepd_student",
                                   description="The exported PEPD loads and gives finite Gaussians on a cached sample."),
                 dg.AssetCheckSpec("student_beats_copy_input", asset="pepd_student",
                                   description="Held-out teacher agreement beats the copy-input baseline (8 objects).")],
    description="PEPD student distilled from the teacher trajectories (Accelerate via Dagster Pipes).",
)
def pepd_student(context: dg.AssetExecutionContext, config: PEPDStudentConfig, settings: DD3GSettings,
                 pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    from dd3g_core.train_config import load_config

    config_path = Path(config.config_file) if config.config_file else CONFIG_DIR / f"distill_{settings.profile}.json"
    teacher = settings.load_teacher()  # loaded once: trajectory version, then both checks
    traj_dir = _trajectories_dir(settings, teacher)
    teacher_folder = settings.teacher_folder()
    base = load_config(config_path, overrides=list(config.overrides) + [f"teacher={teacher_folder}"])
    version = stable_hash({"code": CODE_VERSION, "config": base.identity(), "steps": base.steps,
                           "trajectories": traj_dir.name}, length=16)
    run_dir = settings.root() / "pepd_student" / version
    overrides = list(config.overrides) + [f"teacher={teacher_folder}", f"trajectories={traj_dir}", f"out={run_dir}"]
    result_file = run_dir / "result.json"
    done = result_file.is_file() and json.loads(result_file.read_text()).get("step") == base.steps
    if done:
        context.log.info(f"cache hit: {run_dir} already holds a finished run of this version")
        result = json.loads(result_file.read_text())
        mat = dg.MaterializeResult(metadata={**_metadata(result["metadata"]), "cache_hit": True},
                                   data_version=dg.DataVersion(result["data_version"]))
    else:
        cmd = launch_command(config_path, overrides, config.num_processes, config.accelerate_config)
        context.log.info("launching: " + " ".join(cmd))
        env = dict(os.environ)
        procs = max(1, config.num_processes)
        threads = config.threads_per_process or max(1, (os.cpu_count() or 1) // procs)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env["PYTHONUNBUFFERED"] = "1"
        invocation = pipes_subprocess_client.run(command=cmd, context=context, env=env)
        reported = invocation.get_materialize_result()
        result = json.loads(result_file.read_text())
        mat = dg.MaterializeResult(metadata={**(reported.metadata or {}), "cache_hit": False, "version": version,
                                             "command": " ".join(cmd)},
                                   data_version=reported.data_version or dg.DataVersion(result["data_version"]))
    problems = _check_student(run_dir / "pepd", traj_dir, teacher)
    quality = _quick_quality(run_dir / "pepd", teacher) if not problems else {}
    agree = quality.get("student_vs_teacher", float("nan")) - quality.get("copy_input_vs_teacher", float("nan"))
    return dg.MaterializeResult(
        metadata={**(mat.metadata or {}), "run_dir": dg.MetadataValue.path(str(run_dir))},
        data_version=mat.data_version,
        check_results=[
            dg.AssetCheckResult(check_name="student_renders_finite", passed=not problems,
                                metadata={"problems": dg.MetadataValue.json(problems)}),
            dg.AssetCheckResult(check_name="student_beats_copy_input", passed=bool(agree > 0),
                                severity=dg.AssetCheckSeverity.WARN,
                                metadata={"agreement_minus_copy_input_db": float(agree),
                                          **{k: float(v) for k, v in quality.items()}}),
        ],
    )


def _quick_quality(pepd_dir: Path, teacher, objects: int = 8) -> dict:
    from dd3g_core.evaluation import evaluate_student, heldout_set
    from dd3g_core.model import PEPD

    m = evaluate_student(PEPD.from_pretrained(pepd_dir), teacher, heldout_set(objects, teacher), draws=1, batch=objects)
    keys = ("student_vs_teacher", "copy_input_vs_teacher", "teacher_vs_gt", "student_novel_vs_gt")
    return {k: m[k] for k in keys}


def _metadata(meta: dict) -> dict:
    out = dict(meta)
    out["checkpoint"] = dg.MetadataValue.path(meta["checkpoint"])
    out["loss_curve"] = dg.MetadataValue.json(meta.get("loss_curve", []))
    out["parameters"] = dg.MetadataValue.json(meta.get("parameters", {}))
    return out


def _check_student(pepd_dir: Path, traj_dir: Path, teacher) -> list[str]:
    import numpy as np
    import torch

    from dd3g_core.model import PEPD
    from dd3g_core.shards import iter_samples

    try:
        model = PEPD.from_pretrained(pepd_dir)
        shard_set = next(d for d in sorted(traj_dir.iterdir()) if (d / "manifest.json").is_file())
        s = next(iter(iter_samples(shard_set)))
        image = torch.from_numpy(np.array(s["input.png"])).permute(2, 0, 1)[None]
        with torch.no_grad():
            out = model(torch.from_numpy(s["noise.npy"])[None], torch.from_numpy(s["cameras.npy"]),
                        teacher.encode_condition(image), image, torch.from_numpy(s["viewmats.npy"]),
                        torch.from_numpy(s["ks.npy"]), s["views.npy"].shape[-1])
        g = out.gaussians
        bad = [name for name in ("means", "quats", "log_scales", "opacity_logits", "sh")
               if not torch.isfinite(getattr(g, name)).all()]
        return [f"non-finite {b}" for b in bad]
    except Exception as e:  # noqa: BLE001 - the check reports any failure
        return [f"{type(e).__name__}: {e}"]
