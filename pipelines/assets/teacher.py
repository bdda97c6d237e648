"""``tiny_teacher``: the CPU world's multi-view teacher checkpoint (group ``teacher``).

Training the tiny teacher takes hours on 2 cores, so the ``distill`` job does not retrain it by
default: in the ``tiny`` profile the asset resolves the shipped checkpoint
(``assets/models/tiny-teacher``, made by ``dd3g teacher pretrain``) and reports its path and
weight hash. ``retrain: true`` in the run config trains it with
``dd3g_core.teacher.train.pretrain_tiny_teacher`` (preset ``tiny``, resumable, under
``<data_root>/tiny_teacher/tiny/``) and uses that export instead. The ``smoke`` profile always
uses a seconds-long ``smoke``-preset teacher trained into ``<data_root>/tiny_teacher/smoke/``
(a resumed finished run is a no-op), so tests never depend on the shipped weights.
"""

import json
from pathlib import Path

import dagster as dg

from dd3g_core.io import sha256_file

from ..resources import DD3GSettings

CODE_VERSION = "1"  # bump when the recipe or the resolution of the checkpoint changes


class TinyTeacherConfig(dg.Config):
    retrain: bool = False  # train (resume) the profile's preset instead of using the shipped checkpoint
    resume: bool = True  # with retrain: continue the run in the data root (False: start over)


def _train(context: dg.AssetExecutionContext, settings: DD3GSettings, preset: str, resume: bool) -> Path:
    from dd3g_core.teacher.train import pretrain_tiny_teacher

    run_dir = settings.root() / "tiny_teacher" / preset
    res = pretrain_tiny_teacher(preset, run_dir, resume=resume, export_to=run_dir / "teacher")
    context.log.info(f"trained tiny teacher preset {preset!r} to step {res.step} in {run_dir}")
    return run_dir / "teacher"


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
        path, source = _train(context, settings, "tiny", config.resume), "retrained"
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
