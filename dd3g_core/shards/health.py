"""What the training reader does with bad data: skip and record a bad sample, stop when nothing is readable.

* :class:`SkipRecorder` — the webdataset ``handler``: a sample that fails to decode or validate (or a tar
  member that cannot be read) is skipped and recorded with its key and reason. Bounded however long the
  run and however many processes share the log: the JSONL skip log holds each distinct (key, field,
  reason) once and at most ``max_records`` records in all (appenders take an ``flock`` and read what the
  others wrote); every skip, logged or not, is counted in ``<log>.count`` (:func:`count_skips`). In
  memory a process keeps at most ``max_records`` records; reasons are cut to ``MAX_REASON`` characters.
* :class:`ShardWatch` — two pipeline stages around decoding that notice when no shard gives a good
  sample: once every shard has been drawn and failed since the last good sample, it raises
  :class:`NoReadableShardsError` (names the data, the number of shards and the last reasons) instead of
  resampling the same broken shards forever.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_RECORDS = 1000  # records in a skip log (all processes together) and in each process's memory
MAX_REASON = 500  # characters of a reason kept: a record stays a short line whatever the exception says


class PickleFieldError(ValueError):
    """A sample carries a pickle-based field (never decoded; fatal for the reader)."""


class SampleDecodeError(ValueError):
    """One sample could not be decoded (the reader skips and records it)."""

    def __init__(self, key: str, field: str | None, reason: str):
        super().__init__(f"sample {key!r} field {field!r}: {reason}")
        self.key, self.field, self.reason = key, field, reason


class InvalidSampleError(SampleDecodeError):
    """A decoded sample does not match the schema its validator checks (skipped and recorded)."""


class NoReadableShardsError(RuntimeError):
    """No shard of the data gives a single good sample: training cannot make progress."""

    @classmethod
    def unwrap(cls, exn: BaseException) -> NoReadableShardsError:
        """The one-line error out of PyTorch's re-raise from a DataLoader worker (which puts the worker's
        whole traceback in the message)."""
        text = str(exn)
        if "Original Traceback" not in text:
            return exn if isinstance(exn, cls) else cls(text)
        last = text.strip().splitlines()[-1]
        prefix = f"{cls.__module__}.{cls.__qualname__}: "
        return cls(last[len(prefix) :] if last.startswith(prefix) else last)


class SkipRecorder:
    """A webdataset ``handler`` that skips a failing sample and records it (like
    ``wds.warn_and_continue``, but it keeps the key and the reason). Pickle fields and
    :class:`NoReadableShardsError` re-raise.

    ``skipped``: the first ``max_records`` of ``{"key", "field", "reason", "pid"}`` seen in this process;
    ``count``: all skips of this process; ``skip_log``: optional JSONL path shared by all processes
    (DataLoader workers, epochs), bounded as the module docstring says.
    """

    def __init__(self, skip_log: str | Path | None = None, max_records: int = MAX_RECORDS):
        self.skip_log = None if skip_log is None else str(skip_log)
        self.max_records = int(max_records)
        self._reset()

    def _reset(self) -> None:
        self.skipped: list[dict] = []
        self.count = 0
        self.recent: collections.deque[str] = collections.deque(maxlen=3)  # for NoReadableShardsError
        self._logged: set[str] = set()  # identities of the records in the log (<= max_records)
        self._offset = 0  # how far this process has read the log
        self._full_said = False
        self._lock = threading.Lock()

    def __call__(self, exn: BaseException) -> bool:
        if isinstance(exn, (PickleFieldError, NoReadableShardsError)):
            raise exn
        if isinstance(exn, SampleDecodeError):
            rec = {"key": exn.key, "field": exn.field, "reason": exn.reason}
        else:  # tar / grouping errors: webdataset puts the url in the args when it knows it
            rec = {"key": None, "field": None, "reason": f"{type(exn).__name__}: {exn}"}
        rec["reason"] = " ".join(str(rec["reason"]).split())[:MAX_REASON]  # one short line
        rec["pid"] = os.getpid()
        with self._lock:
            self.count += 1
            self.recent.append(rec["reason"] if rec["key"] is None else f"{rec['key']}: {rec['reason']}")
            if len(self.skipped) < self.max_records:
                self.skipped.append(rec)
            if self.skip_log is None:
                new = self.count <= self.max_records
            else:
                new = self._log(rec)
            if new:
                logger.warning("skipping bad sample: %s", rec)
            elif self.skip_log is not None and len(self._logged) >= self.max_records and not self._full_said:
                self._full_said = True
                logger.warning(
                    "skip log %s holds %d records; further skips are only counted", self.skip_log, self.max_records
                )
        return True

    def _log(self, rec: dict) -> bool:
        """Under an exclusive ``flock`` (all processes): catch up on the records others appended, append
        ``rec`` if it is new and the log has room, count the skip. True if ``rec`` was appended."""
        import fcntl

        ident = json.dumps([rec["key"], rec["field"], rec["reason"]])
        with open(self.skip_log, "ab+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            f.seek(self._offset)
            for line in f.read().splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):  # a line torn by a kill -9
                    r = json.loads(line)
                    self._logged.add(json.dumps([r["key"], r["field"], r["reason"]]))
            new = ident not in self._logged and len(self._logged) < self.max_records
            if new:
                f.write((json.dumps(rec) + "\n").encode())
                self._logged.add(ident)
            self._offset = f.tell()
            _add_count(self.skip_log)
        return new

    def __getstate__(self):  # picklable for DataLoader workers (each gets its own records)
        return {"skip_log": self.skip_log, "max_records": self.max_records}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()


def _count_path(skip_log: str | Path) -> Path:
    return Path(f"{skip_log}.count")


def _add_count(skip_log: str | Path) -> None:
    """One more skip in ``<log>.count`` (the caller holds the log's lock)."""
    with open(_count_path(skip_log), "a+") as f:
        f.seek(0)
        try:
            n = int(f.read() or 0)
        except ValueError:  # torn by a kill -9: the log's records are the best lower bound left
            n = len(read_skip_log(skip_log))
        f.seek(0)
        f.truncate()
        f.write(f"{n + 1}\n")


def read_skip_log(path: str | Path) -> list[dict]:
    """The skip records of a skip log (lines torn by a kill -9 are left out)."""
    p, out = Path(path), []
    for line in p.read_text(errors="replace").splitlines() if p.is_file() else []:
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                out.append(rec)
    return out


def count_skips(path: str | Path) -> int:
    """All skips a skip log accounts for (``<log>.count``; its records if the count is unreadable)."""
    try:
        return int(_count_path(path).read_text())
    except (OSError, ValueError):
        return len(read_skip_log(path))


class ShardWatch:
    """Notices a reader that can read nothing (see the module docstring).

    ``shards`` goes right before the tar opener (it sees each url this worker draws), ``samples`` right
    after decoding and validation (it sees each good sample). Both run in the same worker process, pulled
    lazily in order: when the next url is drawn, every sample of the previous one has passed ``samples``.
    """

    def __init__(self, source: str, num_shards: int, recorder: SkipRecorder):
        self.source, self.num_shards, self.recorder = source, int(num_shards), recorder
        self._current: str | None = None
        self._good_in_current = 0
        self._failed: set[str] = set()  # urls drawn since the last good sample that gave none

    def shards(self, src: Iterable[dict]) -> Iterator[dict]:
        self._current = None  # a new epoch: the url the last one was cut in is not judged
        for item in src:
            self._close_current()
            self._current, self._good_in_current = item.get("url"), 0
            yield item

    def samples(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample in src:
            self._good_in_current += 1
            self._failed.clear()
            yield sample

    def _close_current(self) -> None:
        if self._current is None or self._good_in_current:
            return
        self._failed.add(self._current)
        if len(self._failed) >= self.num_shards:
            reasons = " | ".join(self.recorder.recent) or "no samples in them"
            raise NoReadableShardsError(
                f"{self.source}: none of its {self.num_shards} shard(s) gives a readable sample "
                f"({self.recorder.count} skipped in this process; last: {reasons}); "
                "check or re-create the data (validate_shards names corrupt files)"
            )
