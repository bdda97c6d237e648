"""The recipe on a Celery cluster (``dagster-celery``, the ``celery`` extra): every step is a Celery task that
any worker listening on the broker may run (docs/scaling.md).

:data:`CELERY_JOBS`: two jobs whose executor is ``dagster_celery.celery_executor``:

* ``shards_celery``: ``rgba_images``, ``teacher`` and ``teacher_trajectories``, the data stages, over every
  shard partition (the same range tags as ``distill``);
* ``distill_celery``: the same selection and tags as ``distill``.

``defs`` is the main code location (:data:`pipelines.definitions.defs`) with these jobs added. It is built
when first asked for, so ``pipelines.definitions`` may import :data:`CELERY_JOBS` (``defs`` is then the main
code location itself). Run a job with the broker in the run config; the workers are started with the same
``execution.config`` block (``dagster-celery worker start -A dagster_celery.app -y run_config.yaml``)::

    dagster job execute -m pipelines.scale_out -a defs -j shards_celery -c run_config.yaml

Steps exchange records through ``<data_root>/.records`` and events through the Dagster instance: the workers
need the same ``DD3G_DATA_ROOT`` (a shared file system, mounted at the same path) and the same instance
storage (``DAGSTER_HOME``, or Postgres across machines) as the process that launches the run, and the same
``DD3G_PROFILE``. ``tests/test_scale_out.py`` runs ``shards_celery`` on two local workers and a local Redis.
"""

from __future__ import annotations

import functools

import dagster as dg
from dagster_celery import celery_executor

from .assets import rgba_images, teacher, teacher_trajectories
from .jobs import distill_job
from .partitions import shard_range_tags

__all__ = ["CELERY_JOBS", "distill_celery_job", "shards_celery_job"]  # and defs, below

shards_celery_job = dg.define_asset_job(
    "shards_celery",
    selection=dg.AssetSelection.assets(rgba_images, teacher, teacher_trajectories),
    executor_def=celery_executor,
    description="The data stages (RGBA images, the teacher, its trajectories) over every shard partition, each step "
    "a Celery task.",
    tags=shard_range_tags(),
)

distill_celery_job = dg.define_asset_job(
    "distill_celery",
    selection=distill_job.selection,
    executor_def=celery_executor,
    description="The distill job's assets and checks, each step a Celery task.",
    tags=shard_range_tags(),
)

CELERY_JOBS = [shards_celery_job, distill_celery_job]


@functools.cache
def _defs() -> dg.Definitions:
    from .definitions import defs as main  # here, not above: pipelines.definitions may import this module

    if {j.name for j in CELERY_JOBS} <= {j.name for j in main.jobs or []}:
        return main
    return dg.Definitions.merge(main, dg.Definitions(jobs=CELERY_JOBS))


def __getattr__(name: str):
    if name == "defs":  # Dagster loads ``-a defs`` (and the workers the same pointer) with getattr
        return _defs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
