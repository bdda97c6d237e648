"""``tiny_teacher``: the CPU world's multi-view teacher checkpoint (group ``teacher``).

Training the tiny teacher takes hours on 2 cores, so the ``distill`` job does not retrain it by
default: in the ``tiny`` profile the asset resolves the shipped checkpoint
(``assets/models/tiny-teacher``, made by ``dd3g teacher recipe``) and reports its path and
weight hash. ``retrain: true`` in the run config reruns the recipe that made it
(``dd3g_core.teacher.recipe``, recipe ``shipped``: two stages, ~4 h on 2 cores, resumable, under
``<data_root>/tiny_teacher/shipped/``) and uses that export instead. The ``smoke`` profile always
runs the seconds-long ``smoke`` recipe (same two stages on a small U-Net) into
``<data_root>/tiny_teacher/smoke/`` (a resumed finished run is a no-op), so tests never depend
on the shipped weights.
"""

import json
from pathlib import Path

import dagster as dg

from dd3g_core.io import sha256_file

from ..resources import DD3GSettings

CODE_VERSION = "2"  # bump when the recipe or the resolution of the checkpoint changes


class TinyTeacherConfig(dg.Config):
    retrain: bool = False  # rerun (resume) the shipped checkpoint's recipe instead of using the checkpoint
    resume: bool = True  # with retrain: continue the run in the data root (False: start over)


def _train(context: dg.AssetExecutionContext, settings: DD3GSettings, recipe: str, resume: bool) -> Path:
    from dd3g_core.teacher.recipe import train_teacher_recipe

    run_dir = settings.root() / "tiny_teacher" / recipe
    res = train_teacher_recipe(recipe, run_dir, resume=resume)
    if res.exported is None:
        raise RuntimeError(f"teacher recipe {recipe!r} stopped at step {res.step} of a stage in {run_dir}; "
                           f"materialize again to resume it")
    context.log.info(f"trained tiny teacher recipe {recipe!r} (last stage at step {res.step}) in {run_dir}")
    return res.exported


@dg.asset(
    code_version=CODE_VERSION,
    group_name="teacher",
    kinds={"pytorch"},
    description="Tiny multi-view teacher (pixel-space MultiViewUNet) checkpoint: shipped, or retrained on request.",
)
def tiny_teacher(context: dg.AssetExecutionContext, config: TinyTeacherConfig,
                 settings: DD3GSettings) -> dg.MaterializeResult:
    from dd3g_core.teacher.tiny import TinyTeacher, default_tiny_teacher_path

    profile = settings.profile
    if profile == "full":
        raise NotImplementedError("the full profile's teacher is ImageDream from a local weights folder "
                                  "(dd3g_core.teacher.imagedream); tiny_teacher serves profiles tiny/smoke")
    if profile == "smoke":
        path, source = _train(context, settings, "smoke", config.resume), "smoke-trained"
    elif config.retrain:
        path, source = _train(context, settings, "shipped", config.resume), "retrained"
    else:
        path, source = default_tiny_teacher_path(must_exist=True), "shipped"
    teacher = TinyTeacher.from_pretrained(path)  # validates config + weights
    weights_sha = sha256_file(path / "model.safetensors")
    cfg = json.loads((path / "config.json").read_text())
    return dg.MaterializeResult(
        data_version=dg.DataVersion(weights_sha[:16]),
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "source": source,
            "weights_sha256": weights_sha,
            "config_hash": teacher.config_hash(),
            "parameters": sum(p.numel() for p in teacher.parameters()),
            "size_bytes": (path / "model.safetensors").stat().st_size,
            "unet": dg.MetadataValue.json(cfg["unet"]),
            "default_steps": teacher.default_steps,
            "default_guidance": teacher.default_guidance,
        },
    )
