"""Rules every shard stage follows: which keys a shard set can hold, and when a partition may be published.

* :func:`sample_key_problem` — the one key rule: a key names the files of one sample inside a flat tar
  (non-empty, no ``/``, no ``.``, unique in its partition). ``write_shards`` enforces it; the stages
  check keys where they enter (built from seeds, read from upstream data) so a bad key is one recorded
  reject, never a failed partition.
* :func:`check_reject_share` — a partition that accepted no sample, or rejected more than its limit
  (the profile's ``limits``), raises :class:`RejectShareError` naming the partition, its counts and the
  most common reasons, and is not published. A partition that attempted nothing is empty, not failed:
  only the ``folder`` source of ``rgba_images`` makes one (no image of the folder hashed into it), and
  the trajectories of an empty rgba partition are empty too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

__all__ = ["RejectShareError", "LIMIT_SETTINGS", "sample_key_problem", "check_reject_share"]


class RejectShareError(RuntimeError):
    """A shard partition rejected more than its limit of samples, or all of them: it is not published."""


LIMIT_SETTINGS = {  # the profile setting (dd3g_core.profiles.StageLimits) that holds each stage's limit
    "rgba_images": "limits.rgba_max_reject_share",
    "teacher_trajectories": "limits.trajectories_max_reject_share",
}


def sample_key_problem(key, seen: set[str] | None = None) -> str | None:
    """Why ``key`` cannot name a sample of a shard set (``write_shards`` would refuse it), or ``None``.

    A key names the files of its sample inside a flat tar: non-empty, without ``/`` (a folder) or ``.``
    (webdataset splits the field name at the first dot). ``seen``: the keys already in this partition (a
    duplicate is refused too); a good key is added to it."""
    if not isinstance(key, str) or not key:
        return f"empty sample key ({key!r})"
    bad = [repr(c) for c in "/." if c in key]
    if bad:
        return (
            f"sample key {key!r} contains {' and '.join(bad)}: a sample key names the files of one sample in a "
            f"flat tar (no folders, no dots)"
        )
    if seen is not None:
        if key in seen:
            return f"duplicate sample key {key!r}: another sample of this partition already has it"
        seen.add(key)
    return None


def _reason(reject: dict) -> str:
    """One short reason of a reject record (rgba: filter names or the error; trajectories: ``reason``)."""
    if reject.get("error"):
        why = f"{reject.get('stage', '?')}: {reject['error']}"
    elif isinstance(reject.get("reasons"), list):
        names = [str(r.get("filter", r)) if isinstance(r, dict) else str(r) for r in reject["reasons"]]
        why = "filter " + ", ".join(names)
    else:
        why = str(reject.get("reason", "no reason recorded"))
    why = " ".join(why.split())
    return why if len(why) <= 160 else why[:157] + "..."


def check_reject_share(
    stage: str, shard_index: int, accepted: int, attempted: int, rejects: Sequence[dict], max_share: float
) -> None:
    """Raise :class:`RejectShareError` if a partition accepted no sample or rejected more than ``max_share``
    of ``attempted``: one message with the partition, the counts and the three most common reasons.
    Nothing attempted (an empty partition) is nothing rejected: it passes."""
    if attempted == 0 and accepted == 0:
        return
    rejected = max(0, attempted - accepted)
    share = rejected / attempted if attempted else 1.0
    if accepted > 0 and share <= max_share:
        return
    top = Counter(_reason(r) for r in rejects if isinstance(r, dict)).most_common(3)
    reasons = "; ".join(f"{n}x {why}" for why, n in top) or "none recorded"
    floor = ", and a partition must accept at least one sample" if accepted == 0 else ""
    raise RejectShareError(
        f"{stage} partition {int(shard_index):05d}: {accepted} of {attempted} samples accepted, {rejected} rejected "
        f"({share:.0%}; limit {max_share:.0%}{floor}). Most common reasons: {reasons}. The partition is not "
        f"published: fix the cause (or raise {LIMIT_SETTINGS.get(stage, 'the limit')} in the profile) and "
        f"materialize it again"
    )
