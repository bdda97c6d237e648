"""The regression gate: is a candidate student's evaluation no worse than the accepted student's?

Both sides are ``metrics.json`` headlines of ``dd3g_core.evaluation`` (the ``evaluation`` asset, ``dd3g
eval``). A gated metric is named as in the headline, with ``{display}`` standing for the display resolution
of the evaluation (``psnr_{display}`` -> ``psnr_128`` in the tiny profile). Each carries a tolerance: the
largest regression allowed, in the metric's own unit (dB, SSIM, IoU, alpha). Whether higher or lower is
better is the metric's, not the user's, to say (:func:`higher_is_better`).

The gate fails, naming every reason, when the candidate lacks a gated metric or has a non-finite one, or
when any gated metric regressed by more than its tolerance. With no accepted student yet, a complete
evaluation passes (the first promotion).

An evaluation on a folder of the user's rendered objects (``evaluation.folder``, ``mode: folder``) has no
resolution suffix (``psnr_{display}`` is its ``psnr``) and no teacher agreement; what it does not measure
is noted, not failed. Numbers on different object sets (the accepted student scored on held-out procedural
objects, the candidate on a folder) are not compared: the candidate is then gated on completeness alone,
as a first promotion on its evaluation, and the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GateResult",
    "compare",
    "higher_is_better",
    "resolve_metric",
    "evaluation_mode",
    "DEFAULT_GATE",
    "check_gate_spec",
]

# metric (headline key, "{display}" = display resolution) -> allowed regression
DEFAULT_GATE: dict[str, float] = {
    "psnr_{display}": 0.3,  # dB against ground truth at display resolution
    "ssim_{display}": 0.01,
    "iou_{display}": 0.01,
    "fog_alpha_{display}": 0.005,  # haze: lower is better
    "agree_unseen": 0.3,  # dB against the teacher's unseen views
    "agree_seen": 0.5,
}

# headline keys where a smaller number is the better one (by prefix); every other gated metric: larger
_LOWER_IS_BETTER = ("fog_alpha", "fog_black", "outside_alpha", "student_ms", "transparent_share", "scale_px")
_KNOWN = (
    "psnr",
    "ssim",
    "iou",
    "lpips",
    "clip",
    "agree_seen",
    "agree_unseen",
    "diversity",
    "speedup",
    *_LOWER_IS_BETTER,
)


def higher_is_better(metric: str) -> bool:
    if metric.startswith("lpips"):
        return False
    return not metric.startswith(_LOWER_IS_BETTER)


def check_gate_spec(gate: Mapping[str, Any], where: str = "promotion.gate") -> None:
    """A gate spec names known metrics with finite, non-negative tolerances (else ``ValueError``)."""
    if not gate:
        raise ValueError(f"{where} must name at least one metric to compare (e.g. {dict(DEFAULT_GATE)})")
    for name, tol in gate.items():
        if not isinstance(name, str) or not name.startswith(_KNOWN):
            raise ValueError(f"{where}: unknown metric {name!r}; gated metrics start with one of {list(_KNOWN)}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"{where}.{name}: the allowed regression must be a number >= 0, got {tol!r}")


# what an evaluation on a folder of the user's rendered objects (``evaluation.folder``) never measures: there
# are no teacher views of those objects to agree with
_NOT_IN_FOLDER_MODE = ("agree_seen", "agree_unseen", "diversity", "speedup", "student_ms", "scale_px", "opacity")


def evaluation_mode(metrics: Mapping[str, Any] | None) -> str:
    """``procedural`` (held-out objects, ``headline`` keys with a resolution suffix) or ``folder``."""
    return "folder" if metrics and metrics.get("mode") == "folder" else "procedural"


def resolve_metric(name: str, metrics: Mapping[str, Any]) -> str:
    """The headline key of a gated metric in these metrics: ``psnr_{display}`` is ``psnr_128`` for the tiny
    profile's held-out objects and ``psnr`` for a folder evaluation (scored at the folder's own resolution)."""
    if "{display}" not in name:
        return name
    if evaluation_mode(metrics) == "folder":
        return name.replace("_{display}", "").replace("{display}", "")
    display = (metrics.get("resolutions") or {}).get("display")
    return name.replace("{display}", str(display))


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed (empty when passed)
    compared: dict[str, dict[str, float | None]] = field(default_factory=dict)  # metric -> candidate/accepted/delta
    notes: list[str] = field(default_factory=list)  # what was not compared, and why

    def summary(self) -> str:
        if self.passed:
            text = "no regression: " + ", ".join(
                f"{k} {v['candidate']:.4g}" + (f" (accepted {v['accepted']:.4g})" if v["accepted"] is not None else "")
                for k, v in self.compared.items()
            )
            return "; ".join([text, *self.notes])
        return "; ".join(self.reasons)


def _headline(metrics: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not metrics:
        return {}
    return metrics.get("headline") or metrics.get("means") or {}


def compare(candidate: Mapping[str, Any], accepted: Mapping[str, Any] | None, gate: Mapping[str, float]) -> GateResult:
    """``candidate`` / ``accepted``: evaluation metrics (``metrics.json`` contents, or ``{"headline": ...,
    "resolutions": ...}``); ``accepted`` None: nothing accepted yet. See the module docstring."""
    check_gate_spec(gate)
    reasons: list[str] = []
    notes: list[str] = []
    compared: dict[str, dict[str, float | None]] = {}
    mode = evaluation_mode(candidate)
    if accepted and evaluation_mode(accepted) != mode:
        # numbers on different object sets say nothing about each other: this is the first promotion on the
        # candidate's evaluation, gated only on its completeness
        notes.append(
            f"not compared: the accepted student was evaluated on {evaluation_mode(accepted)} objects, the candidate "
            f"on {mode} objects"
        )
        accepted = None
    new, old = _headline(candidate), _headline(accepted)
    for spec, tolerance in gate.items():
        name = resolve_metric(spec, candidate)
        if mode == "folder" and name.startswith(_NOT_IN_FOLDER_MODE):
            notes.append(f"{name}: not measured on a folder of rendered objects")
            continue
        value = new.get(name)
        ref_name = resolve_metric(spec, accepted) if accepted else name
        if value is None and mode == "folder" and old.get(ref_name) is None:
            notes.append(f"{name}: not measured on this folder (e.g. views without alpha)")
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            reasons.append(f"candidate's {name} is missing or not finite ({value!r}): a partial evaluation")
            continue
        ref = old.get(ref_name) if accepted else None
        ref = float(ref) if isinstance(ref, (int, float)) and math.isfinite(ref) else None
        delta = None if ref is None else float(value) - ref
        compared[name] = {"candidate": float(value), "accepted": ref, "delta": delta}
        if delta is None:
            continue
        regression = -delta if higher_is_better(name) else delta
        if regression > tolerance:
            better = "higher" if higher_is_better(name) else "lower"
            reasons.append(
                f"{name} regressed: {value:.4g} against the accepted {ref:.4g} ({better} is better; "
                f"allowed {tolerance:g}, regression {regression:.4g})"
            )
    return GateResult(passed=not reasons, reasons=reasons, compared=compared, notes=notes)
