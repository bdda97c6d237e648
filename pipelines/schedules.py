"""``nightly_retrain``: the schedule of the ``retrain`` job (runs under ``dagster-daemon``; ``dagster dev`` starts one).

When (``cron``, ``timezone``) and whether it starts running (``schedule_running``) come from the profile's
``promotion`` settings, read when the definitions load (``DD3G_PROFILE``, a profile file can change them).
Each tick fingerprints the recipe's sources (``dd3g_core.promotion.source_fingerprint``: the RGBA source
and its prompt list, the teacher folder's content, the stage settings) and

* skips when the accepted student was trained from exactly these sources (nothing changed upstream);
* skips while a retrain of these sources is in flight, or after ``max_attempts`` finished ones that did
  not promote (a regression refused by the gate is not retried every night; a changed source is);
* otherwise requests one ``retrain`` run over every shard partition, tagged with the fingerprint, which
  ``accepted_student`` records in the pointer when the new student passes the gate.
"""

import dagster as dg

from dd3g_core.profiles import get_profile
from dd3g_core.promotion import AcceptedPointerError, read_accepted, source_fingerprint

from .jobs import retrain_job, retrain_tags
from .resources import DD3GSettings
from .sources_tag import SOURCES_TAG

__all__ = ["nightly_retrain", "ALL_SCHEDULES"]

_PROMOTION = get_profile().promotion


@dg.schedule(
    name="nightly_retrain",
    job=retrain_job,
    cron_schedule=_PROMOTION.cron,
    execution_timezone=_PROMOTION.timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING
    if _PROMOTION.schedule_running
    else dg.DefaultScheduleStatus.STOPPED,
    description=f"Retrain at '{_PROMOTION.cron}' ({_PROMOTION.timezone}) when a source changed (prompts, images, "
    "teacher, settings): re-cache what changed, warm-start the student, evaluate, promote through the gate.",
)
def nightly_retrain(context: dg.ScheduleEvaluationContext, settings: DD3GSettings):
    profile = settings.profile_config()
    sources = source_fingerprint(profile, settings.teacher_path or None, settings.hash_cache())
    try:
        accepted = read_accepted(settings.root(), verify=False)
    except AcceptedPointerError as e:
        context.log.warning(f"{e}; retraining")
        accepted = None
    if accepted is not None and accepted.get("sources") == sources:
        return dg.SkipReason(
            f"nothing changed upstream: the accepted student {accepted['weights_sha256'][:16]} was trained from "
            f"these sources ({sources})"
        )
    runs = context.instance.get_runs(filters=dg.RunsFilter(job_name=retrain_job.name, tags={SOURCES_TAG: sources}))
    running = [r.run_id for r in runs if not r.is_finished]
    if running:
        return dg.SkipReason(f"a retrain of these sources ({sources}) is in flight: run {running[0]}")
    if len(runs) >= profile.promotion.max_attempts:
        return dg.SkipReason(
            f"{len(runs)} retrain run(s) of these sources ({sources}) did not promote (last: {runs[0].run_id}, "
            f"{runs[0].status.value}); waiting for a source to change (promotion.max_attempts "
            f"{profile.promotion.max_attempts})"
        )
    # the settings' profile (the one the definitions were loaded with) sizes the shard range
    partitions = dg.StaticPartitionsDefinition(profile.shard_partition_keys())
    return dg.RunRequest(
        run_key=f"{sources}-{len(runs)}",
        tags={**retrain_tags(profile.promotion.warm_start, partitions), SOURCES_TAG: sources},
    )


ALL_SCHEDULES = [nightly_retrain]
