"""How a training process lives with others: one writer per run directory, and no orphans.

* :func:`run_directory_lock` — rank 0 holds :func:`dd3g_core.io.run_lock` on ``<out>/.lock`` for the
  whole run and every rank learns whether it got it, so a second run on the same directory refuses on
  all its ranks at once (:class:`~dd3g_core.io.LockedError` naming the owner's pid and host) before
  writing anything. The lock of a killed run dies with it.
* :func:`exit_with_parent` — a trainer launched by an orchestrator (Dagster Pipes sets
  ``DAGSTER_PIPES_CONTEXT``; or any launcher that sets ``DD3G_EXIT_WITH_PARENT=1``) stops when any
  process that started it dies (``kill -9`` included): a watchdog thread notices, :func:`check_parent`
  raises :class:`ParentDiedError` at the next step boundary (checkpoints are only ever renamed into
  place complete, so nothing half-written is left), and if the main thread does not get there within
  ``grace_s`` (blocked in a collective, a data loader) the process exits hard. A trainer started by hand
  keeps ordinary Unix semantics (``nohup``/``setsid`` runs outlive their shell); ``DD3G_EXIT_WITH_PARENT=0``
  turns the watchdog off under Dagster too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ..io import LockedError, run_lock

__all__ = ["LOCK_NAME", "ParentDiedError", "run_directory_lock", "exit_with_parent", "check_parent"]

LOCK_NAME = ".lock"


class ParentDiedError(RuntimeError):
    """A process that started this trainer died; the trainer stops rather than run on as an orphan."""


@contextlib.contextmanager
def run_directory_lock(accelerator, out: str | Path) -> Iterator[None]:
    """Collective: hold ``<out>/.lock`` (on rank 0) for the block, or raise LockedError on every rank."""
    with contextlib.ExitStack() as held:
        error: LockedError | None = None
        if accelerator.is_main_process:
            try:
                held.enter_context(run_lock(Path(out) / LOCK_NAME))
            except LockedError as e:
                error = e
        failed = torch.tensor(float(error is not None), device=accelerator.device)
        if accelerator.reduce(failed, reduction="sum").item() > 0:  # every rank refuses together, none waits
            raise error or LockedError(f"{out}: locked by another run (rank 0 could not take {LOCK_NAME})")
        yield


_gone = threading.Event()
_watching: list[threading.Thread] = []
_lost: list[str] = []


def exit_with_parent(grace_s: float = 60.0, poll_s: float = 0.5) -> None:
    """Start (once per process) the watchdog described in the module docstring."""
    if _watching or not watch_requested():
        return
    ancestors = _ancestors()
    if not ancestors:
        return
    thread = threading.Thread(target=_watch, args=(ancestors, grace_s, poll_s), name="dd3g-parent-watch", daemon=True)
    _watching.append(thread)
    thread.start()


def watch_requested() -> bool:
    """``$DD3G_EXIT_WITH_PARENT`` if set, else whether Dagster Pipes launched this process."""
    default = "1" if "DAGSTER_PIPES_CONTEXT" in os.environ else "0"
    return os.environ.get("DD3G_EXIT_WITH_PARENT", default) == "1"


def check_parent() -> None:
    """Raise :class:`ParentDiedError` once the watchdog has seen a launching process die."""
    if _gone.is_set():
        raise ParentDiedError(
            f"{_lost[0]} that started this trainer died; stopping (the last complete checkpoint is kept; "
            "a new run resumes from it)"
        )


def _ancestors() -> list[tuple[int, str | None]]:
    """``(pid, start time)`` of the processes above this one, up to (without) pid 1; the start time
    (``/proc``; None elsewhere, where only the direct parent is watched) tells a reused pid apart."""
    out, pid = [], os.getppid()
    while pid > 1 and len(out) < 64:
        stat = _stat(pid)
        out.append((pid, stat[1] if stat else None))
        if stat is None:
            break
        pid = stat[0]
    return out


def _stat(pid: int) -> tuple[int, str] | None:
    """``(ppid, start time)`` of a live process from ``/proc/<pid>/stat``; None if gone, a zombie, or no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), fields[19]


def _alive(pid: int, start: str | None) -> bool:
    if start is None:
        return os.getppid() == pid
    stat = _stat(pid)
    return stat is not None and stat[1] == start


def _watch(ancestors: list[tuple[int, str | None]], grace_s: float, poll_s: float) -> None:
    while True:
        dead = next((pid for pid, start in ancestors if not _alive(pid, start)), None)
        if dead is not None or os.getppid() != ancestors[0][0]:
            break
        time.sleep(poll_s)
    what = "the parent process" if dead in (None, ancestors[0][0]) else "an ancestor process"
    _lost.append(f"{what} (pid {dead if dead is not None else ancestors[0][0]})")
    _gone.set()
    print(f"dd3g: {_lost[0]} died; stopping at the next step", file=sys.stderr, flush=True)
    time.sleep(grace_s)
    print(f"dd3g: still running {grace_s:.0f} s after {_lost[0]} died; exiting now", file=sys.stderr, flush=True)
    os._exit(3)
