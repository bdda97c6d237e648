"""Check of ``pepd_student``, one step after it.

``student_renders_finite`` (blocking): the exported PEPD loads and a forward on one cached trajectory
sample gives finite Gaussians. What the student is worth is the ``evaluation`` asset's work
(:mod:`pipelines.checks.evaluation`: ``student_beats_copy_input``, ``student_is_not_fog``).
"""

from pathlib import Path

import dagster as dg

from ..resources import DD3GSettings

__all__ = ["student_checks", "student_forward_problems"]


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


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "student_renders_finite",
            asset="pepd_student",
            blocking=True,
            additional_deps=["teacher"],
            description="Blocking: the exported PEPD (`<run>/pepd/`) loads and a forward on one cached trajectory "
            "sample gives finite Gaussians; `problems` names what is not. What the student is worth: evaluation.",
        ),
    ],
    ins={"pepd_student": dg.AssetIn("pepd_student"), "teacher": dg.AssetIn("teacher")},
)
def student_checks(context: dg.AssetCheckExecutionContext, settings: DD3GSettings, pepd_student: dict, teacher: dict):
    from dd3g_core.teacher import load_teacher

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
