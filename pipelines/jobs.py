"""Jobs. ``distill`` runs the whole recipe (``dagster job execute -m pipelines.definitions -j distill``);
its tags select the whole shard-partition range, so one run covers every partition (docs/pipeline.md).
``retrain`` is the same graph, started by the ``nightly_retrain`` schedule (:mod:`pipelines.schedules`): its
student warm-starts from the accepted one (the profile's ``promotion.warm_start``); unchanged partitions
and stages are cache hits, and the new student is promoted only through the gate (docs/retrain.md).
``ablations`` trains (and evaluates) the paper's ablations from what ``distill`` produced
(``dagster job execute -m pipelines.definitions -j ablations``); its tags select every ablation partition,
so one run covers all of them."""

from __future__ import annotations

import dagster as dg

from dd3g_core.profiles import get_profile

from .assets.ablations import ABLATION_PARTITIONS, ABLATIONS_GROUP
from .partitions import SHARD_PARTITIONS, shard_range_tags
from .sources_tag import WARM_START_TAG

# Everything but the ablations: a job's assets must share one partitions definition (shards here), and the
# ablations are a study run on demand, not a stage of the recipe. Assets added to other groups join distill.
distill_job = dg.define_asset_job(
    "distill",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups(ABLATIONS_GROUP),
    description="The whole DD3G recipe: RGBA images, the teacher, its trajectories, the distilled student, its "
    "evaluation and their checks.",
    tags=shard_range_tags(),
)

# Only the ablations group: its inputs (teacher, teacher_trajectories) are the records distill left, so the
# recipe is not re-entered. The range tags make one run, whose steps loop over every ablation partition.
ablations_job = dg.define_asset_job(
    "ablations",
    selection=dg.AssetSelection.groups(ABLATIONS_GROUP),
    description="The paper's ablations (no noise input, no implicit verification, single-head decoding, phase 1 "
    "from scratch): one PEPD student per ablation, same data and budget as pepd_student; run distill first.",
    tags=shard_range_tags(ABLATION_PARTITIONS),
)


def retrain_tags(warm_start: bool, partitions: dg.StaticPartitionsDefinition = SHARD_PARTITIONS) -> dict[str, str]:
    """Every shard partition in one run, and whether the student warm-starts (a tag, not run config: a job's
    default config does not reach a run over a partition range)."""
    return {**shard_range_tags(partitions), WARM_START_TAG: "true" if warm_start else "false"}


retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups(ABLATIONS_GROUP),
    description="The nightly retrain: the recipe again on whatever changed upstream (unchanged partitions are cache "
    "hits), the student warm-started from the accepted one, evaluated, and promoted only if the blocking gate "
    "no_regression_vs_accepted passes.",
    tags=retrain_tags(get_profile().promotion.warm_start),
)

ALL_JOBS = [distill_job, retrain_job, ablations_job]
