"""The dd3g asset graph. ``dagster job execute -m pipelines.definitions -j distill``."""

from __future__ import annotations

import dagster as dg

from .assets import pepd_student, rgba_images, teacher_trajectories, tiny_teacher
from .resources import DD3GSettings, shard_range_tags

ALL_ASSETS = [rgba_images, tiny_teacher, teacher_trajectories, pepd_student]

# `distill` runs the whole recipe; later stages join this selection as they land. Its tags select the
# whole shard-partition range, so one run covers every partition (docs/pipeline.md).
distill_job = dg.define_asset_job("distill", selection=dg.AssetSelection.all(), description="The whole DD3G recipe.",
                                  tags=shard_range_tags())

defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[distill_job],
    resources={"settings": DD3GSettings(), "pipes_subprocess_client": dg.PipesSubprocessClient()},
)
