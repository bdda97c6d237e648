"""``student_ablations``: the paper's ablations of DD3G, one PEPD student per partition (group ``ablations``).

Partition ``name`` (one per :data:`dd3g_core.distill.ablations.ABLATIONS`: ``no_noise``, ``no_implicit``,
``single_head``, ``scratch``) trains ``ablation_config(base, name)``: the same base config, data and step
budget as ``pepd_student`` (the profile's ``distill`` or a JSON run config, plus ``overrides``) with only
that component removed. Inputs are the same records as ``pepd_student``'s (``teacher`` and every
``teacher_trajectories`` partition), and each run is launched, cached and verified exactly like it
(:mod:`pipelines.student_training`). The run directory is ``<data_root>/student_ablations/<name>/<version>/``,
``version`` = hash of pepd_student's version inputs for the ablated config plus the ablation's name.

One run may cover several partitions (``BackfillPolicy.single_run``; the ``ablations`` job's tags select
all four): its step trains them one after the other. A partition whose training fails does not stop the
others; the step then fails naming it, and the next run reuses every finished partition as a cache hit.
The record passed on per partition: pepd_student's record plus ``ablation: name``.
"""

import warnings

import dagster as dg

from dd3g_core.distill.ablations import ABLATIONS, ablation_config

from .. import student_training
from ..partitions import run_data_version
from ..resources import DD3GSettings
from ..student_training import (
    StudentTrainingConfig,
    resolve_base_config,
    student_version,
    student_version_inputs,
    train_student,
    trajectories_content,
)

__all__ = ["ABLATION_PARTITIONS", "ABLATIONS_GROUP", "ablation_asset", "StudentAblationsConfig", "student_ablations"]

CODE_VERSION = f"{student_training.CODE_VERSION}.ablations-1"  # the shared launch code's version, then this
ABLATIONS_GROUP = "ablations"
ABLATION_PARTITIONS = dg.StaticPartitionsDefinition(list(ABLATIONS))


class StudentAblationsConfig(StudentTrainingConfig):
    """The base config every ablation starts from (``config_file`` / ``overrides``, as for ``pepd_student``:
    give both assets the same ones to compare like with like) and how each trainer is launched."""


def ablation_asset(**asset_kwargs):
    """``dg.asset`` partitioned by ablation, group ``ablations``, with a single-run backfill policy (so one
    run of the ``ablations`` job covers every ablation); for the ablation stages downstream as well."""
    with warnings.catch_warnings():  # backfill_policy is a beta parameter in dagster 1.13
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(
            partitions_def=ABLATION_PARTITIONS,
            backfill_policy=dg.BackfillPolicy.single_run(),
            group_name=ABLATIONS_GROUP,
            **asset_kwargs,
        )


@ablation_asset(
    ins={"teacher": dg.AssetIn(), "teacher_trajectories": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    code_version=CODE_VERSION,
    kinds={"pytorch"},
    description="Ablated PEPD students, one per partition: "
    + "; ".join(f"{name}: {what}" for name, what in ABLATIONS.items())
    + ". Same data, base config and step budget as pepd_student; in `<data_root>/student_ablations/<name>/<version>/`. "
    "Look at each partition's `final_loss`, `loss_curve` and `checkpoint`; the comparison is ablation_evaluation.",
)
def student_ablations(
    context: dg.AssetExecutionContext,
    config: StudentAblationsConfig,
    settings: DD3GSettings,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    teacher: dict,
    teacher_trajectories: dict,
):
    base, traj_dir = resolve_base_config(config, settings, teacher, teacher_trajectories)
    records, data_versions, errors = {}, {}, {}
    data = trajectories_content(settings, teacher_trajectories)
    for name in context.partition_keys:
        ablated = ablation_config(base, name)
        version = student_version(
            {**student_version_inputs(CODE_VERSION, ablated, teacher, traj_dir, data), "ablation": name}
        )
        run_dir = settings.root() / "student_ablations" / name / version
        context.log.info(f"ablation {name} ({ABLATIONS[name]}): {run_dir}")
        try:
            trained = train_student(
                context, config, pipes_subprocess_client, ablated, teacher, traj_dir, run_dir, version
            )
        except Exception as e:  # noqa: BLE001 - hours of other ablations should not be lost to one failure
            context.log.error(f"ablation {name} failed: {type(e).__name__}: {e}")
            errors[name] = e
            continue
        records[name] = {**trained.record, "ablation": name}
        data_versions[name] = trained.data_version
        context.add_asset_metadata(
            {**trained.metadata, "ablation": name, "description": ABLATIONS[name]}, partition_key=name
        )
    if errors:
        done = f"; {sorted(records)} finished and are cache hits in the next run" if records else ""
        lines = "\n".join(f"- {name}: {type(e).__name__}: {e}" for name, e in errors.items())
        raise RuntimeError(f"student_ablations: {len(errors)} ablation(s) failed{done}:\n{lines}") from next(
            iter(errors.values())
        )
    return dg.MaterializeResult(
        value=records,
        data_version=run_data_version(data_versions),
        metadata={"ablations": dg.MetadataValue.json(sorted(records)), "trajectories": str(traj_dir)},
    )
