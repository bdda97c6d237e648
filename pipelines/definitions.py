"""The dd3g asset graph. ``dagster job execute -m pipelines.definitions -j distill``."""

from __future__ import annotations

import dagster as dg

from .assets import rgba_images, rgba_images_checks
from .resources import DD3GSettings

ALL_ASSETS = [rgba_images]

# `distill` runs the whole recipe; later stages join this selection as they land.
distill_job = dg.define_asset_job("distill", selection=dg.AssetSelection.all(), description="The whole DD3G recipe.")

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=[rgba_images_checks],
    jobs=[distill_job],
    resources={"settings": DD3GSettings()},
)
