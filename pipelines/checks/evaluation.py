"""Checks of ``evaluation``, read from its ``metrics.json`` (no recomputation).

* ``evaluation_complete`` (ERROR, blocking): the report, its pictures and metrics are there, the
  headline numbers are finite and no object's render was non-finite (such objects are listed per
  object in the report, never averaged away; a broken student must not look evaluated);
* ``student_beats_copy_input`` (WARN): the student agrees with the teacher's unseen views better than
  copying the input image does (``agree_unseen`` minus the copy-input row's);
* ``student_is_not_fog`` (WARN): haze, the mean alpha in the band around each object where the ground
  truth is empty and the render is not solid nearby (``dd3g_core.evaluation.metrics.fog``), at display
  resolution, at most ``FOG_BAR`` (issue #14's bar); ``outside_alpha`` (silhouette errors included)
  rides along as metadata.
"""

import json
import math
from pathlib import Path

import dagster as dg

__all__ = ["evaluation_checks", "evaluation_problems", "FOG_BAR"]

FOG_BAR = 0.02


def evaluation_problems(out: Path, metrics: dict) -> list[str]:
    problems = [f"missing {n}" for n in ("metrics.json", "report.md") if not (out / n).is_file()]
    problems += [f"missing picture {n}" for n in metrics.get("images", []) if not (out / n).is_file()]
    headline = metrics.get("headline") or metrics.get("means") or {}
    if not headline:
        problems.append("no headline metrics")
    problems += [f"{k} is not finite" for k, v in headline.items() if v is None or not math.isfinite(v)]
    for name, s in (metrics.get("summaries") or {}).items():
        for key, seeds in (s.get("nonfinite") or {}).items():
            problems.append(f"{name}: {key} non-finite for objects {seeds[:8]}")
    for key, names in (metrics.get("nonfinite") or {}).items():
        problems.append(f"{key} non-finite for {names[:8]}")
    return problems


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "evaluation_complete",
            asset="evaluation",
            blocking=True,
            description="Blocking: metrics.json, report.md and the pictures exist in the evaluation folder, the "
            "headline numbers are finite and no object's render was non-finite; `problems` lists what is missing.",
        ),
        dg.AssetCheckSpec(
            "student_beats_copy_input",
            asset="evaluation",
            description="Warning: teacher agreement (PSNR) at the unseen views beats copying the input image into "
            "every view; `agree_unseen_minus_copy_input_db` > 0.",
        ),
        dg.AssetCheckSpec(
            "student_is_not_fog",
            asset="evaluation",
            description=f"Warning: mean alpha around the objects where the ground truth is empty <= {FOG_BAR} at "
            "display resolution (no haze around the object); `fog_alpha`, `outside_alpha`.",
        ),
    ],
    ins={"evaluation": dg.AssetIn("evaluation")},
)
def evaluation_checks(evaluation: dict):
    out = Path(evaluation["path"])
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        metrics, read_error = {}, f"metrics.json unreadable: {e}"
    else:
        read_error = ""
    problems = ([read_error] if read_error else []) + evaluation_problems(out, metrics)
    yield dg.AssetCheckResult(
        asset_key="evaluation",
        check_name="evaluation_complete",
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"problems": dg.MetadataValue.json(problems[:50])},
    )
    h = metrics.get("headline") or {}
    margin = h.get("agree_unseen_minus_copy_input")
    yield dg.AssetCheckResult(
        asset_key="evaluation",
        check_name="student_beats_copy_input",
        passed=bool(margin is not None and margin > 0),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"agree_unseen_minus_copy_input_db": float(margin if margin is not None else math.nan)},
    )
    display = (metrics.get("resolutions") or {}).get("display")
    fog = h.get(f"fog_alpha_{display}") if display else None
    yield dg.AssetCheckResult(
        asset_key="evaluation",
        check_name="student_is_not_fog",
        passed=bool(fog is not None and fog <= FOG_BAR),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "fog_alpha": float(fog if fog is not None else math.nan),
            "outside_alpha": float(h.get(f"outside_alpha_{display}", math.nan)),
            "bar": FOG_BAR,
        },
    )
