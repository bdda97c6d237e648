"""``accepted_student``: the student ``dd3g generate`` uses and the nightly retrain starts from (group ``promotion``).

Inputs: ``pepd_student`` (the candidate), its ``evaluation`` and the ``teacher`` it was distilled from. The
gate is ``evaluation``'s blocking check ``no_regression_vs_accepted`` (:mod:`pipelines.checks.promotion`):
when it fails, this asset does not run and nothing is promoted. The asset itself decides again, under the
pointer's lock (``dd3g_core.promotion.promote``), so two runs promoting at once are gated one after the
other and the pointer is never half written; an evaluation that is partial (a missing file, a non-finite
number) or of another student is refused here too. The record passed on is the pointer: ``{path,
weights_sha256, teacher, metrics, sources, accepted_at, ...}``; the data version is the weights' hash.
"""

import json
from pathlib import Path

import dagster as dg

from dd3g_core.promotion import promote, source_fingerprint

from ..checks.evaluation import evaluation_problems
from ..resources import DD3GSettings
from ..sources_tag import SOURCES_TAG

__all__ = ["accepted_student"]


@dg.asset(
    ins={"pepd_student": dg.AssetIn(), "evaluation": dg.AssetIn(), "teacher": dg.AssetIn()},
    group_name="promotion",
    kinds={"pytorch"},
    description="The accepted student: a pointer (<data_root>/accepted_student/current.json) to an immutable copy of "
    "the last student that passed the regression gate against its predecessor. `dd3g generate` uses it by default "
    "and the nightly retrain warm-starts from it.",
)
def accepted_student(
    context: dg.AssetExecutionContext, settings: DD3GSettings, pepd_student: dict, evaluation: dict, teacher: dict
) -> dg.MaterializeResult:
    out = Path(evaluation["path"])
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise dg.Failure(f"not promoted: the evaluation {out} is unreadable ({e})") from None
    problems = evaluation_problems(out, metrics)
    if problems:
        raise dg.Failure(f"not promoted: the evaluation {out} is partial: {'; '.join(problems[:5])}")
    evaluated = evaluation.get("weights_sha256")
    if evaluated and evaluated != pepd_student["weights_sha256"]:
        raise dg.Failure(
            f"not promoted: the evaluation {out} scored the student {evaluated[:16]}, not the candidate "
            f"{pepd_student['weights_sha256'][:16]}: materialize evaluation again"
        )
    profile = settings.profile_config()
    run = context.run
    sources = (run.tags.get(SOURCES_TAG) if run is not None else None) or source_fingerprint(
        profile, settings.teacher_path or None, settings.hash_cache()
    )
    decision = promote(
        settings.root(),
        pepd_student["path"],
        metrics,
        profile.promotion.gate,
        teacher=teacher["path"],
        evaluation={"path": evaluation["path"], "version": evaluation["version"]},
        sources=sources,
        run_id=context.run_id,
    )
    context.log.info(decision.message)
    pointer = decision.pointer
    if pointer is None or pointer["weights_sha256"] != pepd_student["weights_sha256"]:
        raise dg.Failure(decision.message, metadata={"reasons": dg.MetadataValue.json(decision.gate.reasons)})
    metadata = {
        "path": dg.MetadataValue.path(pointer["path"]),
        "weights_sha256": pointer["weights_sha256"],
        "promoted": decision.promoted,
        "sources": sources,
        "previous": dg.MetadataValue.json(pointer.get("previous") or {}),
        "compared": dg.MetadataValue.json(decision.gate.compared),
    }
    for key, value in (pointer["metrics"].get("headline") or {}).items():
        if isinstance(value, (int, float)) and value == value:
            metadata[key] = dg.MetadataValue.float(float(value))
    return dg.MaterializeResult(
        value=pointer, metadata=metadata, data_version=dg.DataVersion(pointer["weights_sha256"][:16])
    )
