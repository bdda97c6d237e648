"""Jobs. ``distill`` runs the whole recipe (``dagster job execute -m pipelines.definitions -j distill``);
its tags select the whole shard-partition range, so one run covers every partition (docs/pipeline.md).
``ablations`` trains (and evaluates) the paper's ablations from what ``distill`` produced
(``dagster job execute -m pipelines.definitions -j ablations``); its tags select every ablation partition,
so one run covers all of them."""

from __future__ import annotations

import dagster as dg

from .assets.ablations import ABLATION_PARTITIONS, ABLATIONS_GROUP
from .partitions import shard_range_tags

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

ALL_JOBS = [distill_job, ablations_job]
