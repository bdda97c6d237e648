"""Progress lines for long loops: done / total, rate and ETA, at most every ``every_s`` seconds.

A stage that can run for minutes tells whoever watches it how far it is, in plain log lines (the
Dagster run log, a terminal, a ``logging`` logger), not a terminal-only bar::

    progress = Progress("teacher_trajectories shard 00003", total=128, log=context.log.info)
    for batch in batches:
        ...
        progress.update(len(batch))
    progress.close()

logs::

    teacher_trajectories shard 00003: 8/128 samples (6%), 1.6 samples/s, ETA 1:15
    teacher_trajectories shard 00003: 56/128 samples (43%), 1.6 samples/s, ETA 0:45
    teacher_trajectories shard 00003 done: 128 samples in 1:20 (1.6 samples/s)

The first update logs at once (so the rate shows early), later ones only when ``every_s`` seconds
have passed since the last line. ``every_s`` defaults to ``$DD3G_PROGRESS_SECONDS`` (30 when unset;
0 logs every update, what tests use). The rate is the average since the ``Progress`` was made, in
``unit``/s, or in s/unit when slower than one unit a second (``seconds_per_unit`` forces either).
An unknown ``total`` (``None``) drops the percentage and the ETA. No dependency, no thread: lines
come only from ``update`` and ``close``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

__all__ = ["PROGRESS_SECONDS_ENV", "DEFAULT_EVERY_S", "Progress", "format_duration", "progress_interval"]

PROGRESS_SECONDS_ENV = "DD3G_PROGRESS_SECONDS"
DEFAULT_EVERY_S = 30.0


def progress_interval() -> float:
    """Seconds between progress lines: ``$DD3G_PROGRESS_SECONDS`` (a number >= 0), else 30."""
    raw = os.environ.get(PROGRESS_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"${PROGRESS_SECONDS_ENV}={raw!r}: expected seconds between progress lines (a number >= 0)")
    return value


def format_duration(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` above (``?`` when unknown): ``55 -> 0:55``, ``3725 -> 1:02:05``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _number(x: float) -> str:
    """3 significant digits, without an exponent for the usual range: 1.6, 12.3, 456, 0.0123."""
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


class Progress:
    """Throttled progress lines for a loop over ``total`` units (see the module doc).

    Args:
        what: the name a line starts with (``"teacher_trajectories shard 00003"``).
        total: units the loop will do, or ``None`` if unknown.
        log: where lines go (``context.log.info``, ``print``, ``logger.info``).
        unit: plural noun of the counted thing (``"samples"``, ``"steps"``, ``"objects"``).
        every_s: seconds between lines; ``None``: :func:`progress_interval`.
        clock: monotonic seconds (tests pass a fake one).
        initial: units already done before this run (a resumed loop); they count towards
            done/total but not towards the rate.
        seconds_per_unit: ``None`` picks ``unit/s`` or ``s/unit`` (whichever is >= 1);
            ``True`` / ``False`` force one.
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        log: Callable[[str], None],
        unit: str = "samples",
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        initial: int = 0,
        seconds_per_unit: bool | None = None,
    ) -> None:
        self.what, self.total, self.log, self.unit = what, total, log, unit
        self.every_s = progress_interval() if every_s is None else float(every_s)
        self.clock = clock
        self.initial = int(initial)
        self.done = int(initial)  # units done, `initial` included
        self.seconds_per_unit = seconds_per_unit
        self.start = clock()
        self.last_line: float | None = None  # clock of the last update line (None: none yet)
        self.closed = False

    # ------------------------------------------------------------------------------ numbers

    @property
    def elapsed(self) -> float:
        """Seconds since this ``Progress`` was made."""
        return self.clock() - self.start

    @property
    def rate(self) -> float:
        """Units per second this run (``initial`` excluded); NaN before any time has passed."""
        elapsed = self.elapsed
        return (self.done - self.initial) / elapsed if elapsed > 0 else math.nan

    @property
    def eta(self) -> float:
        """Seconds left at the current rate; NaN when unknown (no total, no rate yet)."""
        rate = self.rate
        if self.total is None or not (rate > 0):
            return math.nan
        return max(0, self.total - self.done) / rate

    def rate_text(self) -> str:
        """``1.6 samples/s`` or ``2.5 s/step`` (``? steps/s`` while unknown)."""
        rate = self.rate
        per_unit = self.seconds_per_unit
        if per_unit is None:
            per_unit = 0 < rate < 1
        if not (rate > 0 and math.isfinite(rate)):
            return f"? s/{self._singular}" if per_unit else f"? {self.unit}/s"
        return f"{_number(1 / rate)} s/{self._singular}" if per_unit else f"{_number(rate)} {self.unit}/s"

    @property
    def _singular(self) -> str:
        return self.unit[:-1] if self.unit.endswith("s") and len(self.unit) > 1 else self.unit

    def line(self, note: str = "") -> str:
        """The progress line for now: ``what: done/total unit (pct%), rate, ETA m:ss[; note]``."""
        if self.total is None:
            text = f"{self.what}: {self.done} {self.unit}, {self.rate_text()}"
        else:
            pct = int(100 * self.done / self.total) if self.total > 0 else 100
            text = (
                f"{self.what}: {self.done}/{self.total} {self.unit} ({pct}%), "
                f"{self.rate_text()}, ETA {format_duration(self.eta)}"
            )
        return f"{text}; {note}" if note else text

    # ------------------------------------------------------------------------------ logging

    def update(self, n: int = 1, note: str | Callable[[], str] = "", force: bool = False) -> bool:
        """Count ``n`` more units; log a line if it is the first, ``force`` is set or ``every_s`` passed.

        ``note``: text appended to the line (or a function making it, called only when a line is
        logged). Returns whether a line was logged."""
        self.done += int(n)
        now = self.clock()
        if not (force or self.last_line is None or now - self.last_line >= self.every_s):
            return False
        self.last_line = now
        self.log(self.line(note() if callable(note) else note))
        return True

    def close(self, note: str = "") -> None:
        """Log the final line once: ``what done: 128 samples in 1:20 (1.6 samples/s)``."""
        if self.closed:
            return
        self.closed = True
        text = f"{self.what} done: {self.done - self.initial} {self.unit} in {format_duration(self.elapsed)}"
        if self.done > self.initial:
            text += f" ({self.rate_text()})"
        self.log(f"{text}; {note}" if note else text)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:  # a loop that raised is not "done"
            self.close()
