"""Promotion: the regression gate, the accepted-student pointer and the retrain's source fingerprint.

``gate.compare`` (a candidate's evaluation against the accepted one's), ``accepted.promote`` (the only
writer of ``<data_root>/accepted_student/current.json``, under a lock), ``accepted.read_accepted`` (what
``dd3g generate`` uses by default) and ``sources.source_fingerprint`` (what the nightly schedule
compares). The Dagster side is ``pipelines.assets.promotion``, ``pipelines.checks.promotion`` and
``pipelines.schedules``.
"""

from .accepted import (
    ACCEPTED_STAGE,
    POINTER_FORMAT,
    AcceptedPointerError,
    Promotion,
    accepted_dir,
    promote,
    read_accepted,
    read_history,
)
from .gate import DEFAULT_GATE, GateResult, check_gate_spec, compare, higher_is_better, resolve_metric
from .sources import source_fingerprint, source_record

__all__ = [
    "ACCEPTED_STAGE",
    "POINTER_FORMAT",
    "AcceptedPointerError",
    "Promotion",
    "accepted_dir",
    "promote",
    "read_accepted",
    "read_history",
    "DEFAULT_GATE",
    "GateResult",
    "check_gate_spec",
    "compare",
    "higher_is_better",
    "resolve_metric",
    "source_fingerprint",
    "source_record",
]
