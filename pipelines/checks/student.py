"""Checks of ``pepd_student``, one step after it (the teacher is loaded once for both).

``student_renders_finite`` (blocking): the exported PEPD loads and a forward on one cached trajectory
sample gives finite Gaussians. ``student_beats_copy_input`` (WARN): on the profile's held-out
procedural objects the student's renders agree with the teacher's OI better than copying the input
does (``dd3g_core.evaluation``; ``benchmarks/distill_quality.py`` is the full version).
"""

from pathlib import Path

import dagster as dg

from ..resources import DD3GSettings

__all__ = ["student_checks", "student_forward_problems", "quick_quality"]

QUALITY_KEYS = ("student_vs_teacher", "copy_input_vs_teacher", "teacher_vs_gt", "student_novel_vs_gt")


def student_forward_problems(pepd_dir: Path, trajectories: Path, teacher) -> list[str]:
    """Why the exported student cannot run on a cached sample ([] when it gives finite Gaussians)."""
    import torch

    from dd3g_core.model import PEPD
    from dd3g_core.shards import iter_samples
    from dd3g_core.trajectories.sample import student_inputs

    try:
        model = PEPD.from_pretrained(pepd_dir)
        shard_set = next(d for d in sorted(Path(trajectories).iterdir()) if (d / "manifest.json").is_file())
        b = student_inputs(next(iter(iter_samples(shard_set))))
        with torch.no_grad():
            g = model(
                b["noise"],
                b["cameras"],
                teacher.encode_condition(b["image"]),
                b["image"],
                b["viewmats"],
                b["Ks"],
                b["views"].shape[-1],
            ).gaussians
        bad = [
            n
            for n in ("means", "quats", "log_scales", "opacity_logits", "sh")
            if not torch.isfinite(getattr(g, n)).all()
        ]
        return [f"non-finite {n}" for n in bad]
    except Exception as e:  # noqa: BLE001 - the check reports any failure
        return [f"{type(e).__name__}: {e}"]


def quick_quality(pepd_dir: Path, teacher, objects: int, draws: int) -> dict[str, float]:
    from dd3g_core.evaluation import evaluate_student, heldout_set
    from dd3g_core.model import PEPD

    m = evaluate_student(
        PEPD.from_pretrained(pepd_dir), teacher, heldout_set(objects, teacher), draws=draws, batch=objects
    )
    return {k: float(m[k]) for k in QUALITY_KEYS}


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "student_renders_finite",
            asset="pepd_student",
            blocking=True,
            additional_deps=["teacher"],
            description="The exported PEPD loads and gives finite Gaussians on a cached sample.",
        ),
        dg.AssetCheckSpec(
            "student_beats_copy_input",
            asset="pepd_student",
            additional_deps=["teacher"],
            description="Held-out teacher agreement beats the copy-input baseline (WARN).",
        ),
    ],
    ins={"pepd_student": dg.AssetIn("pepd_student"), "teacher": dg.AssetIn("teacher")},
)
def student_checks(context: dg.AssetCheckExecutionContext, settings: DD3GSettings, pepd_student: dict, teacher: dict):
    from dd3g_core.teacher import load_teacher

    profile = settings.profile_config()
    # the held-out evaluation runs on the CPU (dd3g_core.evaluation); the evaluation stage will follow the profile
    model = load_teacher(
        teacher["path"], device="cpu", content_hash=teacher["content_hash"], hash_cache=settings.hash_cache()
    )
    pepd_dir = Path(pepd_student["path"])
    problems = student_forward_problems(pepd_dir, Path(pepd_student["trajectories"]), model)
    yield dg.AssetCheckResult(
        asset_key="pepd_student",
        check_name="student_renders_finite",
        passed=not problems,
        metadata={"problems": dg.MetadataValue.json(problems)},
    )
    quality = (
        {} if problems else quick_quality(pepd_dir, model, profile.evaluation.heldout_objects, profile.evaluation.draws)
    )
    margin = quality.get("student_vs_teacher", float("nan")) - quality.get("copy_input_vs_teacher", float("nan"))
    context.log.info(
        f"student vs teacher {quality.get('student_vs_teacher', float('nan')):.2f} dB, "
        f"copy-input {quality.get('copy_input_vs_teacher', float('nan')):.2f} dB"
    )
    yield dg.AssetCheckResult(
        asset_key="pepd_student",
        check_name="student_beats_copy_input",
        passed=bool(margin > 0),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"agreement_minus_copy_input_db": float(margin), **quality},
    )
