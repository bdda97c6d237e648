"""``teacher``: the multi-view teacher every downstream stage uses, in every profile (group ``teacher``).

Where the folder comes from (``dd3g_core.profiles``, ``TeacherSettings``):

* ``tiny``: the shipped checkpoint ``assets/models/tiny-teacher``; with ``retrain: true`` the recipe
  that made it (``dd3g teacher recipe``, ~4 h on 2 cores, resumable) under ``<data_root>/teacher/shipped/``;
* ``smoke``: the seconds-long ``smoke`` recipe under ``<data_root>/teacher/smoke/`` (a finished run is
  a no-op), so tests never depend on shipped weights;
* ``full``: a local ImageDream folder (``$DD3G_TEACHER_PATH``, the settings resource's
  ``teacher_path`` or a profile file's ``teacher.path``), validated without loading it: every
  component, every config, the U-Net's state-dict layout.

An explicit ``teacher_path`` wins in every profile. The materialization records the folder, its kind
and its content hash (the data version); ``teacher_trajectories`` and ``pepd_student`` receive that
record as their input and load exactly that folder (``dd3g_core.teacher.load_teacher``, which checks
the hash first). A missing or partial folder fails here, with one message naming what is missing and
how to get it, before anything downstream runs.
"""

from pathlib import Path

import dagster as dg

from dd3g_core.profiles import TEACHER_PATH_ENV
from dd3g_core.teacher import MissingWeightsError, describe_teacher_folder
from dd3g_core.teacher.imagedream import HOWTO

from ..resources import DD3GSettings

CODE_VERSION = "3"  # bump when the resolution of the teacher folder changes


class TeacherConfig(dg.Config):
    retrain: bool = False  # tiny: rerun (resume) the profile's teacher recipe instead of using the shipped folder
    resume: bool = True  # with a recipe: continue the run in the data root (False: start over)


def _train_recipe(context: dg.AssetExecutionContext, settings: DD3GSettings, recipe: str, resume: bool) -> Path:
    from dd3g_core.teacher.training.recipe import train_teacher_recipe

    run_dir = settings.root() / "teacher" / recipe
    res = train_teacher_recipe(recipe, run_dir, resume=resume, log=context.log.info)
    if res.exported is None:
        raise RuntimeError(
            f"teacher recipe {recipe!r} stopped at step {res.step} of a stage in {run_dir}; "
            f"materialize again to resume it"
        )
    context.log.info(f"teacher recipe {recipe!r} done (last stage at step {res.step}) in {run_dir}")
    return res.exported


def _teacher_folder(context, config: TeacherConfig, settings: DD3GSettings) -> tuple[Path, str]:
    spec = settings.profile_config().teacher
    if settings.teacher_path:
        return Path(settings.teacher_path).expanduser(), "override"
    if config.retrain and spec.kind != "tiny":
        raise ValueError("retrain applies to the tiny teacher only: the full profile's ImageDream is not trained here")
    if spec.recipe and (config.retrain or not spec.path):
        return _train_recipe(context, settings, spec.recipe, config.resume), f"recipe:{spec.recipe}"
    if spec.path:
        return Path(spec.path).expanduser(), "shipped" if spec.kind == "tiny" else "profile"
    raise MissingWeightsError(
        f"the {settings.profile_config().name} profile needs a local ImageDream folder: set "
        f"${TEACHER_PATH_ENV} (or the settings resource's teacher_path, or teacher.path in a "
        f"profile file). {HOWTO}"
    )


@dg.asset(
    code_version=CODE_VERSION,
    group_name="teacher",
    kinds={"pytorch"},
    description="The multi-view teacher folder every stage uses (tiny: the shipped assets/models/tiny-teacher or a "
    "recipe run under `<data_root>/teacher/`; full: your local ImageDream folder, validated without running it), "
    "recorded with its content hash (the data version). Look at `path`, `source` (shipped / recipe / override / "
    "profile) and `content_hash`.",
)
def teacher(context: dg.AssetExecutionContext, config: TeacherConfig, settings: DD3GSettings):
    spec = settings.profile_config().teacher
    folder, source = _teacher_folder(context, config, settings)
    record = {**describe_teacher_folder(folder, kind=spec.kind, hash_cache=settings.hash_cache()), "source": source}
    context.log.info(f"teacher ({record['kind']}, {source}): {record['path']} content {record['content_hash'][:16]}")
    metadata = {
        "path": dg.MetadataValue.path(record["path"]),
        "kind": record["kind"],
        "source": source,
        "content_hash": record["content_hash"],
        "files": record["files"],
        "size_bytes": record["bytes"],
    }
    if record["kind"] == "tiny":
        metadata.update(
            config_hash=record["config_hash"],
            parameters=record["parameters"],
            default_steps=record["default_steps"],
            default_guidance=record["default_guidance"],
        )
    else:
        metadata.update(unet_parameters=record["unet_parameters"], unet=dg.MetadataValue.json(record["unet"]))
    return dg.MaterializeResult(
        value=record, data_version=dg.DataVersion(record["content_hash"][:16]), metadata=metadata
    )
