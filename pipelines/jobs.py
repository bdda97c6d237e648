"""Jobs. ``distill`` runs the whole recipe (``dagster job execute -m pipelines.definitions -j distill``);
its tags select the whole shard-partition range, so one run covers every partition (docs/pipeline.md)."""

from __future__ import annotations

import dagster as dg

from .partitions import shard_range_tags

distill_job = dg.define_asset_job(
    "distill",
    selection=dg.AssetSelection.all(),
    description="The whole DD3G recipe: RGBA images, the teacher, its trajectories, the distilled student and its "
    "checks.",
    tags=shard_range_tags(),
)

ALL_JOBS = [distill_job]
