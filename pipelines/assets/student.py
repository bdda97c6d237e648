"""``pepd_student``: distil the teacher's cached trajectories into PEPD (group ``student``).

Training runs as a subprocess through Dagster Pipes — ``python -m accelerate.commands.launch
[--multi_gpu --num_processes N | --config_file F] -m pipelines.pipes_train --config RUN.json`` (the
trainer ``dd3g_core.distill.train`` with a Pipes reporter on rank 0) — so one asset can own N GPUs
(or N gloo processes on a CPU box). Rank 0 streams its log lines to the run log and reports the
materialization: loss curve, checkpoint path, parameter counts, skipped samples, and the exported
weights' hash as the data version. This asset adds what the UI shows
(:func:`pipelines.student_preview.student_ui_metadata`): ``student_views`` (renders of held-out objects from
several sides, on white and black), ``loss_curve_plot`` and ``final_loss`` / ``final_rgb_mse`` as numbers.

Inputs: the ``teacher`` record (the folder the trainer loads) and the ``teacher_trajectories``
records of every partition (the shard sets it reads); with ``warm_start``, the accepted student's weights
(``dd3g_core.promotion``). Settings: the profile's ``distill`` (or a
JSON run config), plus ``overrides``. The run directory is ``<data_root>/pepd_student/<version>/``,
``version`` = hash of this asset's code version, the resolved config's identity, the teacher's
content hash and the trajectories' version (with a ``folder`` RGBA source, whose versions stay put when images
are added, also the trajectory partitions' content hashes: :func:`pipelines.student_training.trajectories_content`).
``<run>/distill_config.json`` is the exact config the
trainer ran with. A finished run of the same version is a cache hit (no launch) only if every file it
vouches for still matches ``<run>/export_manifest.json`` (sizes, sha256: :mod:`pipelines.export_manifest`);
otherwise, and for an unfinished run, the trainer is launched and resumes from its newest checkpoint, so
a killed run loses at most one checkpoint interval and a damaged export is rebuilt.
The record passed on: ``{path: <run>/pepd, run_dir, trajectories, weights_sha256, version}``.
Checks: :mod:`pipelines.checks.student`. The launch itself is :mod:`pipelines.student_training` (shared with
``student_ablations``).
"""

import dagster as dg

from dd3g_core.promotion import read_accepted

from ..resources import DD3GSettings
from ..sources_tag import WARM_START_TAG
from ..student_preview import student_ui_metadata
from ..student_training import (
    CODE_VERSION,
    StudentTrainingConfig,
    resolve_base_config,
    student_version,
    student_version_inputs,
    train_student,
    trajectories_content,
)


class PEPDStudentConfig(StudentTrainingConfig):
    """``config_file`` / ``overrides`` pick the DistillConfig; ``num_processes`` / ``accelerate_config`` /
    ``threads_per_process`` how the trainer is launched (:class:`pipelines.student_training.StudentTrainingConfig`).
    ``warm_start``: start from the accepted student's weights (``accepted_student``); with nothing accepted
    yet, phase 1 starts from the teacher as usual. Unset: the run's ``dd3g/warm_start`` tag decides (the
    ``retrain`` job's tags carry the profile's ``promotion.warm_start``; ``distill`` has none, so its student
    starts from the teacher)."""

    warm_start: bool | None = None


@dg.asset(
    ins={"teacher": dg.AssetIn(), "teacher_trajectories": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    code_version=CODE_VERSION,
    group_name="student",
    kinds={"pytorch"},
    description="Stage 3: the PEPD student distilled from the teacher trajectories (Accelerate launched through "
    "Dagster Pipes), in `<data_root>/pepd_student/<version>/` (`pepd/`: the exported weights; `log.jsonl`, "
    "`checkpoints/`, `result.json`). Look at `student_views` ([Show Markdown]: renders of two held-out objects from "
    "six sides at display resolution, on white and on black), `loss_curve_plot` (and the inline `loss_sparkline`), "
    "`final_loss` / `final_rgb_mse` (plotted across materializations) and the check student_renders_finite.",
)
def pepd_student(
    context: dg.AssetExecutionContext,
    config: PEPDStudentConfig,
    settings: DD3GSettings,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    teacher: dict,
    teacher_trajectories: dict,
):
    base, traj_dir = resolve_base_config(config, settings, teacher, teacher_trajectories)
    warm_from = "none"
    warm_start = config.warm_start
    if warm_start is None:
        warm_start = context.run.tags.get(WARM_START_TAG, "false") == "true"
    if warm_start:
        accepted = read_accepted(settings.root())  # verified: a damaged copy fails here, naming the fix
        if accepted is None:
            context.log.info("warm_start: no accepted student yet, phase 1 starts from the teacher")
        else:
            base, warm_from = base.replace(init_from=accepted["path"]), accepted["weights_sha256"][:16]
            context.log.info(f"warm_start: from the accepted student {warm_from} ({accepted['path']})")
    data = trajectories_content(settings, teacher_trajectories)
    version = student_version(student_version_inputs(CODE_VERSION, base, teacher, traj_dir, data))
    run_dir = settings.root() / "pepd_student" / version
    trained = train_student(context, config, pipes_subprocess_client, base, teacher, traj_dir, run_dir, version)
    return dg.MaterializeResult(
        value=trained.record,
        metadata={
            **trained.metadata,
            "warm_start_from": warm_from,
            **student_ui_metadata(settings, teacher, trained, context.log),
        },
        data_version=dg.DataVersion(trained.data_version),
    )
