"""Evaluate checkpoints end to end: what ``dd3g eval`` and the ``evaluation`` asset call.

``evaluate_checkpoints({"student": DIR, "no_noise": DIR2, ...}, teacher, settings, out_dir)``:
loads each PEPD (refusing one made for another teacher), gets the references (given, loaded from
``references_dir`` when it holds this version, else built and, with ``references_dir``, saved
there), scores everything (:mod:`.suite`) and writes the report (:mod:`.report`) into ``out_dir``
(the caller publishes it atomically). Returns the ``metrics.json`` content.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ..io import atomic_directory, stable_hash
from .references import REFERENCES_FORMAT, References, build_references, load_references, save_references

__all__ = ["evaluate_checkpoints", "references_version", "get_references", "load_students"]


def references_version(teacher_hash: str, settings, num_gaussians: int) -> str:
    """What the references depend on: the teacher, the settings that shape them, the student's size."""
    keep = {k: v for k, v in settings.to_dict().items() if k not in ("lpips_weights", "clip_weights", "grid_objects")}
    return stable_hash(
        {"format": REFERENCES_FORMAT, "teacher": teacher_hash, "settings": keep, "num_gaussians": int(num_gaussians)},
        length=16,
    )


def get_references(
    teacher, settings, num_gaussians: int, references_dir: str | Path | None, log: Callable[[str], None] = print
) -> References:
    """Load the references of this version from ``references_dir/<version>`` or build and publish them."""
    if references_dir is None:
        return build_references(teacher, settings, num_gaussians, log)
    version = references_version(teacher.config_hash(), settings, num_gaussians)
    target = Path(references_dir) / version
    if target.is_dir():
        try:
            refs = load_references(target)
            log(f"references: {target} (cached)")
            return refs
        except (FileNotFoundError, ValueError) as e:
            log(f"references: {target} unusable ({e}); rebuilding")
    refs = build_references(teacher, settings, num_gaussians, log)
    with atomic_directory(target) as tmp:
        save_references(refs, tmp)
    return refs


def load_students(checkpoints: Mapping[str, str | Path], device) -> dict:
    from ..model import PEPD

    return {name: PEPD.from_pretrained(path, device=device) for name, path in checkpoints.items()}


def evaluate_checkpoints(
    checkpoints: Mapping[str, str | Path],
    teacher,
    settings,
    out_dir: str | Path,
    references: References | None = None,
    references_dir: str | Path | None = None,
    header: Mapping | None = None,
    log: Callable[[str], None] = print,
    backend: str = "auto",
) -> dict:
    from .metrics import lpips_or_none
    from .report import write_report
    from .suite import check_student_matches_teacher, evaluate_students

    t0 = time.perf_counter()
    students = load_students(checkpoints, teacher.device)
    for name, model in students.items():  # before any expensive work
        check_student_matches_teacher(model, teacher, checkpoints[name])
    main = next(iter(students.values()))
    if references is None:
        references = get_references(teacher, settings, main.config.num_gaussians, references_dir, log)
    lpips, lpips_name = lpips_or_none(settings.lpips_weights, teacher.device)
    log(f"LPIPS: {lpips_name}")
    result = evaluate_students(students, teacher, references, settings, lpips, backend, log)
    head = {
        "student": str(next(iter(checkpoints.values()))),
        "teacher": teacher.describe().get("teacher_id", "?"),
        "compared": ", ".join(f"{k}={v}" for k, v in list(checkpoints.items())[1:]) or "—",
        "LPIPS": lpips_name,
        **dict(header or {}),
    }
    metrics = write_report(result, references, settings, teacher, out_dir, head)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"evaluation report written ({metrics['seconds']:.0f} s)")
    return metrics
