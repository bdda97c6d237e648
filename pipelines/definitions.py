"""The dd3g asset graph. ``dagster job execute -m pipelines.definitions -j distill``.

Assets per stage in :mod:`pipelines.assets`, checks in :mod:`pipelines.checks`, jobs in
:mod:`pipelines.jobs`, the nightly retrain in :mod:`pipelines.schedules`, resources in
:mod:`pipelines.resources` and :mod:`pipelines.io_managers`.
"""

from __future__ import annotations

import dagster as dg

from .assets import ALL_ASSETS
from .checks import evaluation_checks, no_regression_vs_accepted, student_checks
from .io_managers import StageRecordIOManager
from .jobs import ALL_JOBS
from .resources import DD3GSettings
from .schedules import ALL_SCHEDULES

settings = DD3GSettings()

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=[student_checks, evaluation_checks, no_regression_vs_accepted],
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    resources={
        "settings": settings,
        "io_manager": StageRecordIOManager(settings=settings),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    },
)
