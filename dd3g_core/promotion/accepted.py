"""The accepted student: a pointer to the student that ``dd3g generate`` uses and retrains start from.

Layout under ``<data_root>/accepted_student/``::

    current.json          the pointer (format ``dd3g-accepted-student-1``): path, weights hash, metrics, ...
    history.jsonl         one line per decision (accepted or refused, with the gate's reasons)
    <sha16>/pepd/         an immutable copy of every accepted student (the training run may be cleaned up)
    .lock                 serialises decisions

:func:`promote` is the only writer. Under an exclusive lock it reads the pointer, compares the candidate's
evaluation with the accepted student's through the gate (:mod:`.gate`), and only then replaces the
pointer atomically (written to a temporary file, then renamed over it). Two concurrent promotions therefore never
corrupt the pointer, and the second is gated against the first's result, not against what was accepted
when it started. A reader never sees a half-written pointer, and :func:`read_accepted` verifies the
model's bytes against the recorded hash before anything loads them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_directory, atomic_write_json, sha256_file
from .gate import GateResult, compare, evaluation_mode

__all__ = [
    "ACCEPTED_STAGE",
    "POINTER_FORMAT",
    "AcceptedPointerError",
    "Promotion",
    "accepted_dir",
    "read_accepted",
    "read_history",
    "promote",
]

ACCEPTED_STAGE = "accepted_student"
POINTER_NAME = "current.json"
HISTORY_NAME = "history.jsonl"
POINTER_FORMAT = "dd3g-accepted-student-1"
WEIGHTS_NAME = "model.safetensors"
_POINTER_FIELDS = ("path", "weights_sha256", "metrics", "accepted_at")


class AcceptedPointerError(ValueError):
    """The accepted pointer or the model it names is damaged (the message says what and the fix)."""


def accepted_dir(data_root: str | os.PathLike) -> Path:
    return Path(data_root) / ACCEPTED_STAGE


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_accepted(data_root: str | os.PathLike, verify: bool = True) -> dict[str, Any] | None:
    """The pointer (``None`` when nothing was accepted yet). ``verify``: the model folder's weights must hash
    to the recorded sha256 (a damaged or replaced copy is an :class:`AcceptedPointerError`, never loaded)."""
    path = accepted_dir(data_root) / POINTER_NAME
    if not path.is_file():
        return None
    try:
        pointer = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AcceptedPointerError(
            f"the accepted-student pointer {path} is unreadable ({e}); its history is in {path.parent / HISTORY_NAME}: "
            "re-run the promotion (materialize accepted_student) or delete the pointer to fall back to the shipped "
            "student"
        ) from None
    if not isinstance(pointer, dict) or pointer.get("format") != POINTER_FORMAT:
        raise AcceptedPointerError(f"{path} is not an accepted-student pointer (format {POINTER_FORMAT})")
    missing = [k for k in _POINTER_FIELDS if k not in pointer]
    if missing:
        raise AcceptedPointerError(f"{path} lacks {missing}: re-run the promotion or delete the pointer")
    if verify:
        weights = Path(pointer["path"]) / WEIGHTS_NAME
        if not weights.is_file():
            raise AcceptedPointerError(f"{path} names {pointer['path']}, whose {WEIGHTS_NAME} is missing")
        if sha256_file(weights) != pointer["weights_sha256"]:
            raise AcceptedPointerError(
                f"{weights} does not match the accepted hash {pointer['weights_sha256'][:16]}: the copy was "
                "changed or damaged; re-run the promotion or delete the pointer"
            )
    return pointer


def read_history(data_root: str | os.PathLike) -> list[dict[str, Any]]:
    path = accepted_dir(data_root) / HISTORY_NAME
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):  # a torn last line of a killed writer is skipped, not fatal
            out.append(json.loads(line))
    return out


@contextlib.contextmanager
def _decision_lock(root: Path) -> Iterator[None]:
    """A blocking POSIX record lock: released by the kernel if the holder dies, so a killed promotion never
    blocks the next one."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _append_history(root: Path, entry: Mapping[str, Any]) -> None:
    with open(root / HISTORY_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _copy_model(root: Path, model_dir: Path, sha: str) -> Path:
    """An immutable copy ``<root>/<sha16>/pepd`` (reused when it is there and verifies)."""
    dest = root / sha[:16]
    weights = dest / "pepd" / WEIGHTS_NAME
    if weights.is_file() and sha256_file(weights) == sha:
        return dest / "pepd"
    with atomic_directory(dest) as tmp:
        shutil.copytree(model_dir, tmp / "pepd", ignore=shutil.ignore_patterns(".*"))
        if sha256_file(tmp / "pepd" / WEIGHTS_NAME) != sha:
            raise AcceptedPointerError(f"{model_dir} changed while it was copied: promote it again")
    return dest / "pepd"


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    gate: GateResult
    pointer: dict[str, Any] | None  # the pointer after the decision
    message: str


def promote(
    data_root: str | os.PathLike,
    model_dir: str | os.PathLike,
    metrics: Mapping[str, Any],
    gate: Mapping[str, float],
    *,
    teacher: str | None = None,
    evaluation: Mapping[str, Any] | None = None,
    sources: str | None = None,
    run_id: str | None = None,
) -> Promotion:
    """Make ``model_dir`` (an exported PEPD folder) the accepted student if its evaluation ``metrics``
    pass ``gate`` against the accepted student's, under the decision lock; otherwise change nothing but the
    history. ``sources``: the fingerprint of the inputs it was trained from (the nightly schedule skips a
    tick whose sources are the accepted student's)."""
    root = accepted_dir(data_root)
    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{model_dir} has no {WEIGHTS_NAME}: not an exported student")
    sha = sha256_file(model_dir / WEIGHTS_NAME)
    kept = {  # what later candidates are compared with (dd3g_core.promotion.gate reads these three)
        "mode": evaluation_mode(metrics),
        "headline": dict(metrics.get("headline") or metrics.get("means") or {}),
        "resolutions": dict(metrics.get("resolutions") or {}),
    }
    with _decision_lock(root):
        current = read_accepted(data_root, verify=False)
        if current is not None and current["weights_sha256"] == sha:
            result = compare(kept, current["metrics"], gate)
            return Promotion(False, result, current, f"{sha[:16]} is already the accepted student")
        result = compare(kept, current["metrics"] if current else None, gate)
        entry = {"at": _now(), "weights_sha256": sha, "run_id": run_id, "sources": sources, "candidate": str(model_dir)}
        if not result.passed:
            _append_history(root, {**entry, "decision": "refused", "reasons": result.reasons})
            accepted = current["weights_sha256"][:16] if current else "none"
            return Promotion(
                False, result, current, f"not promoted (the accepted student stays {accepted}): " + result.summary()
            )
        path = _copy_model(root, model_dir, sha)
        pointer = {
            "format": POINTER_FORMAT,
            "path": str(path),
            "weights_sha256": sha,
            "teacher": teacher,
            "metrics": kept,
            "evaluation": dict(evaluation or {}),
            "sources": sources,
            "run_id": run_id,
            "accepted_at": entry["at"],
            "previous": None
            if current is None
            else {k: current.get(k) for k in ("weights_sha256", "accepted_at", "path", "run_id")},
        }
        atomic_write_json(root / POINTER_NAME, pointer)
        _append_history(root, {**entry, "decision": "accepted", "compared": result.compared})
        return Promotion(True, result, pointer, f"promoted {sha[:16]}: " + result.summary())
