"""The promotion gate: ``no_regression_vs_accepted`` on ``evaluation`` (ERROR, blocking).

It compares the candidate's evaluation (``metrics.json``) with the accepted student's recorded metrics
through the profile's ``promotion.gate`` (``dd3g_core.promotion.gate``): every gated metric must be
present, finite and no worse than the accepted one's by more than its tolerance. Blocking: when it fails,
``accepted_student`` does not run in that run, so a regressed student is never promoted. With nothing
accepted yet it passes on a complete evaluation (the first promotion); a damaged pointer fails it.
"""

import json
from pathlib import Path

import dagster as dg

from dd3g_core.promotion import AcceptedPointerError, compare, read_accepted

from ..resources import DD3GSettings

__all__ = ["no_regression_vs_accepted"]


@dg.asset_check(
    asset="evaluation",
    blocking=True,
    description="The promotion gate: no gated metric (profile promotion.gate: PSNR, SSIM, IoU, fog at display "
    "resolution, teacher agreement) regressed against the accepted student beyond its tolerance. Blocks "
    "accepted_student.",
)
def no_regression_vs_accepted(settings: DD3GSettings, evaluation: dict) -> dg.AssetCheckResult:
    gate = settings.profile_config().promotion.gate
    try:
        metrics = json.loads((Path(evaluation["path"]) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata={"problem": f"metrics.json unreadable: {e}"}
        )
    try:
        accepted = read_accepted(settings.root(), verify=False)
    except AcceptedPointerError as e:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata={"problem": str(e)})
    result = compare(metrics, accepted["metrics"] if accepted else None, gate)
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=result.summary(),
        metadata={
            "accepted": accepted["weights_sha256"][:16] if accepted else "none (first promotion)",
            "regressions": dg.MetadataValue.json(result.reasons),
            "compared": dg.MetadataValue.json(result.compared),
            "gate": dg.MetadataValue.json(dict(gate)),
        },
    )
