"""``evaluation_references`` and ``evaluation``: stage 4, what the student is worth (group ``evaluation``).

``evaluation_references`` (teacher + the student's Gaussian count): the held-out objects with their
ground truth at the novel cameras, the teacher's own views from every object's N, and the per-sample
fit ceiling (``dd3g_core.evaluation.references``). They do not depend on the student's weights, so a
retrained student reuses them: ``<data_root>/evaluation_references/<version>/`` (version = teacher
content hash + evaluation settings + Gaussian count) is a cache hit when it is there.

``evaluation`` (student + teacher + references): every number of ``docs/evaluation.md`` for the
student against the references, written atomically to ``<data_root>/evaluation/<version>/``
(``metrics.json``, ``report.md``, pictures; version = the student's weights hash + the references'
version + the settings). In the UI: the headline numbers as numeric metadata (plotted across
materializations), the table and the display-resolution picture inline. With ``evaluation.folder``
set (full profile: rendered objects of your own, docs/evaluation_folder.md) the student is scored on
that folder instead. Checks: :mod:`pipelines.checks.evaluation`.
"""

import json
from pathlib import Path

import dagster as dg

from dd3g_core.io import atomic_directory, stable_hash, tree_sha256

from ..preview import png_file_markdown
from ..resources import DD3GSettings

__all__ = ["evaluation_references", "evaluation", "evaluation_metadata", "load_profile_teacher"]

CODE_VERSION = "1"


def load_profile_teacher(settings: DD3GSettings, teacher: dict):
    """The teacher the upstream record names, on the profile's device, its bytes verified."""
    from dd3g_core.teacher import load_teacher

    profile = settings.profile_config()
    return load_teacher(
        teacher["path"],
        device=profile.teacher.device,
        content_hash=teacher["content_hash"],
        hash_cache=settings.hash_cache(),
    )


def evaluation_metadata(out: Path, metrics: dict) -> dict:
    """Numeric headline metrics + the report's table and main picture inline."""
    meta: dict = {"report": dg.MetadataValue.path(str(out / "report.md"))}
    for k, v in (metrics.get("headline") or metrics.get("means") or {}).items():
        if isinstance(v, (int, float)) and v == v:  # NaN is not plottable
            meta[k] = dg.MetadataValue.float(float(v))
    text = (out / "report.md").read_text(encoding="utf-8")
    table = text.split("## Methods and references", 1)[-1].split("## ", 1)[0].strip() if "## Methods" in text else ""
    pictures = [
        p
        for p in ("compare_white.png", "compare_black.png", "inputs_compare.png", "folder_compare.png")
        if (out / p).is_file()
    ]
    legend = text.split("## Pictures", 1)[1].strip().split("\n\n", 1)[0] if "## Pictures" in text else ""
    md = table + "\n\n" + legend + "\n\n" + "\n\n".join(png_file_markdown(out / p, p) for p in pictures[:2])
    meta["report_preview"] = dg.MetadataValue.md(md)
    return meta


@dg.asset(
    ins={"teacher": dg.AssetIn(), "pepd_student": dg.AssetIn()},
    code_version=CODE_VERSION,
    group_name="evaluation",
    kinds={"pytorch"},
    description="Held-out objects with ground truth at novel cameras, the teacher's own views from each object's "
    "noise and the per-sample fit ceiling: what every student is compared with, in "
    "`<data_root>/evaluation_references/<version>/` (cached per teacher and settings). Look at `objects`, "
    "`novel_cameras` and `seconds`.",
)
def evaluation_references(
    context: dg.AssetExecutionContext, settings: DD3GSettings, teacher: dict, pepd_student: dict
) -> dg.MaterializeResult:
    from dd3g_core.evaluation.references import build_references, save_references
    from dd3g_core.evaluation.run import references_version
    from dd3g_core.model import PEPD

    s = settings.profile_config().evaluation
    num_gaussians = PEPD.read_config(pepd_student["path"])[0].num_gaussians
    if s.folder:  # the student is scored on the user's folder: no procedural references to make
        context.log.info(f"evaluation.folder is set ({s.folder}): no procedural references")
        if not Path(s.folder).is_dir():
            raise FileNotFoundError(
                f"evaluation.folder {s.folder} does not exist: a folder of rendered objects "
                f"(docs/evaluation_folder.md), or leave evaluation.folder empty for the held-out procedural objects"
            )
        content = tree_sha256(s.folder, settings.root() / ".records" / "evaluation_folder_hashes.json")
        version = stable_hash({"folder": content["sha256"], "num_gaussians": num_gaussians}, length=16)
        return dg.MaterializeResult(
            value={"path": "", "version": version, "num_gaussians": num_gaussians, "folder": s.folder},
            metadata={"folder": dg.MetadataValue.path(s.folder)},
            data_version=dg.DataVersion(version),
        )
    version = references_version(teacher["content_hash"], s, num_gaussians)
    out = settings.root() / "evaluation_references" / version
    meta_path = out / "references.json"
    if meta_path.is_file() and (out / "references.safetensors").is_file():
        context.log.info(f"cache hit: {out}")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    else:
        model = load_profile_teacher(settings, teacher)
        refs = build_references(model, s, num_gaussians, log=context.log.info)
        with atomic_directory(out) as tmp:
            save_references(refs, tmp)
        meta = refs.meta
    record = {"path": str(out), "version": version, "num_gaussians": num_gaussians}
    return dg.MaterializeResult(
        value=record,
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "objects": len(meta["seeds"]),
            "novel_cameras": len(meta["novel"]["azimuths_deg"]),
            "fit_objects": meta["fit_objects"],
            "seconds": dg.MetadataValue.json(meta["seconds"]),
        },
        data_version=dg.DataVersion(version),
    )


def run_evaluation(
    context, settings: DD3GSettings, teacher: dict, references: dict, checkpoints: dict[str, str], out: Path, header
) -> dict:
    """Score ``checkpoints`` (the first is the main one) into ``out`` atomically; a cache hit when done."""
    from dd3g_core.evaluation.references import load_references
    from dd3g_core.evaluation.run import evaluate_checkpoints

    if (out / "metrics.json").is_file() and (out / "report.md").is_file():
        context.log.info(f"cache hit: {out}")
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    model = load_profile_teacher(settings, teacher)
    s = settings.profile_config().evaluation
    with atomic_directory(out) as tmp:
        if s.folder:
            from dd3g_core.evaluation.folder_eval import evaluate_folder

            metrics = evaluate_folder(
                next(iter(checkpoints.values())), model, s.folder, s, tmp, header, context.log.info
            )
        else:
            refs = load_references(references["path"])
            metrics = evaluate_checkpoints(
                checkpoints, model, s, tmp, references=refs, header=header, log=context.log.info
            )
    context.log.info(f"evaluation published: {out}")
    return metrics


@dg.asset(
    ins={"pepd_student": dg.AssetIn(), "teacher": dg.AssetIn(), "evaluation_references": dg.AssetIn()},
    code_version=CODE_VERSION,
    group_name="evaluation",
    kinds={"pytorch"},
    description="Stage 4: the student scored against the references: teacher agreement (seen/unseen), novel views vs "
    "ground truth at the teacher's and display resolution (PSNR, SSIM, LPIPS, IoU), fog, Gaussian statistics, "
    "diversity, latency; in `<data_root>/evaluation/<version>/` (metrics.json, report.md, pictures). Look at "
    "`report_preview` ([Show Markdown]: the table, then input | ground truth | teacher | student on white and on "
    "black), the headline numbers (`psnr_<display>`, `agree_unseen`, `iou_<display>`, `fog_alpha_<display>`, ...: "
    "plotted across materializations) and the checks.",
)
def evaluation(
    context: dg.AssetExecutionContext,
    settings: DD3GSettings,
    pepd_student: dict,
    teacher: dict,
    evaluation_references: dict,
) -> dg.MaterializeResult:
    s = settings.profile_config().evaluation
    version = stable_hash(
        {
            "code": CODE_VERSION,
            "student": pepd_student["weights_sha256"],
            "references": evaluation_references["version"],
            "settings": s.to_dict(),
        },
        length=16,
    )
    out = settings.root() / "evaluation" / version
    header = {"student run": pepd_student["run_dir"], "profile": settings.profile}
    metrics = run_evaluation(
        context, settings, teacher, evaluation_references, {"student": pepd_student["path"]}, out, header
    )
    record = {
        "path": str(out),
        "version": version,
        "headline": metrics.get("headline") or metrics.get("means"),
        "weights_sha256": pepd_student["weights_sha256"],  # which student this scored (accepted_student checks it)
    }
    return dg.MaterializeResult(
        value=record,
        metadata={**evaluation_metadata(out, metrics), "version": version},
        data_version=dg.DataVersion(version),
    )


@dg.asset(
    ins={
        "student_ablations": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "pepd_student": dg.AssetIn(),
        "teacher": dg.AssetIn(),
        "evaluation_references": dg.AssetIn(),
    },
    code_version=CODE_VERSION,
    group_name="ablations",
    kinds={"pytorch"},
    description="The paper's ablation table: the full method and every ablation student scored by the same "
    "evaluation against the same references, in `<data_root>/ablation_evaluation/<version>/`. Look at "
    "`report_preview` (the table and pictures) and `<ablation>_minus_full_*` (each ablation minus the full method).",
)
def ablation_evaluation(
    context: dg.AssetExecutionContext,
    settings: DD3GSettings,
    student_ablations: dict,
    pepd_student: dict,
    teacher: dict,
    evaluation_references: dict,
) -> dg.MaterializeResult:
    s = settings.profile_config().evaluation
    checkpoints = {"full method": pepd_student["path"]}
    checkpoints.update({name: record["path"] for name, record in sorted(student_ablations.items())})
    weights = [
        pepd_student["weights_sha256"],
        *(student_ablations[k]["weights_sha256"] for k in sorted(student_ablations)),
    ]
    version = stable_hash(
        {
            "code": CODE_VERSION,
            "students": weights,
            "references": evaluation_references["version"],
            "settings": s.to_dict(),
        },
        length=16,
    )
    out = settings.root() / "ablation_evaluation" / version
    metrics = run_evaluation(
        context,
        settings,
        teacher,
        evaluation_references,
        checkpoints,
        out,
        {"ablations": ", ".join(sorted(student_ablations))},
    )
    meta = {**evaluation_metadata(out, metrics), "version": version}
    for name, deltas in (metrics.get("deltas") or {}).items():
        for key in ("agree_unseen", "psnr@" + str((metrics.get("resolutions") or {}).get("display"))):
            if isinstance(deltas.get(key), float):
                meta[f"{name}_minus_full_{key.replace('@', '_')}"] = dg.MetadataValue.float(deltas[key])
    return dg.MaterializeResult(
        value={"path": str(out), "version": version}, metadata=meta, data_version=dg.DataVersion(version)
    )
