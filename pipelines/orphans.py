"""A step process whose run coordinator dies stops, with everything it launched.

``dagster job execute`` (or a run worker of ``dagster dev``) runs each step of the multiprocess executor
in a child process it spawns with :mod:`multiprocessing`; ``pepd_student``'s step launches
``accelerate launch`` and the trainer under it. When the coordinator dies without cleaning up
(``kill -9``, the OOM killer, a closed ssh session), nothing stops them: the step and the trainer go
on, nothing records their events, and the run stays STARTED.

:func:`start_orphan_watchdog` (called by the ``settings`` resource's ``setup_for_execution`` in every
step process) starts a daemon thread in a step process that checks once a second that its parent is
still the coordinator it was spawned by (an orphan's parent pid changes to the reaper's; a pid, not the
value 1, because systemd user instances and containers adopt orphans too). When the coordinator is gone
the watchdog

1. marks the run FAILURE in the Dagster instance, saying why (nothing else would: the coordinator that
   writes the run's end is gone);
2. stops the step's whole process tree, deepest first: SIGTERM, then SIGKILL to what is left after
   :data:`GRACE_S` seconds (the Pipes subprocess, ``accelerate launch``, the trainer, its loader workers);
3. exits the step process.

The next run resumes: shard partitions are published atomically and the trainer resumes from its newest
checkpoint. Processes that are not multiprocessing children (the CLI itself, an in-process executor, a
run worker) never start a watchdog: their parent is not a coordinator they report to.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time

__all__ = ["GRACE_S", "POLL_S", "start_orphan_watchdog", "stop_process_tree"]

POLL_S = 1.0  # how often the parent is checked
GRACE_S = 20.0  # how long children get between SIGTERM and SIGKILL (a trainer may finish a checkpoint)

_lock = threading.Lock()
_watching_pid: int | None = None  # the process a watchdog runs in (a forked child must start its own)
_run: dict = {}  # the instance and run id to mark failed (the last call that knew them)


def start_orphan_watchdog(instance=None, run_id: str | None = None) -> bool:
    """Start the watchdog of this step process (once per process; later calls only fill in the run);
    False where none applies (not a multiprocessing child). ``instance``/``run_id``: the run to mark
    failed when the coordinator dies (a nested resource may be set up without them)."""
    global _watching_pid
    if multiprocessing.parent_process() is None:
        return False
    with _lock:
        if instance is not None and run_id:
            _run.update(instance=instance, run_id=run_id)
        if _watching_pid == os.getpid():
            return True
        _watching_pid = os.getpid()
    coordinator = os.getppid()
    threading.Thread(target=_watch, args=(coordinator,), name="dd3g-orphan-watchdog", daemon=True).start()
    return True


def _watch(coordinator: int) -> None:
    while os.getppid() == coordinator:
        time.sleep(POLL_S)
    # the stopping runs in a non-daemon thread: the step's main thread, which fails as soon as its
    # subprocess is terminated, cannot end the process (and so this thread) before the tree is stopped
    threading.Thread(target=_stop, args=(coordinator,), name="dd3g-orphan-stop", daemon=False).start()


def _stop(coordinator: int) -> None:
    message = (
        f"the process that ran this step (pid {coordinator}, e.g. `dagster job execute`) died; step process "
        f"{os.getpid()} stopped itself and the processes it launched. Run the job again: finished partitions "
        f"are reused and the trainer resumes from its newest checkpoint"
    )
    print(f"dd3g: {message}", file=sys.stderr, flush=True)
    try:
        with _lock:
            instance, run_id = _run.get("instance"), _run.get("run_id")
        _mark_failed(instance, run_id, message)  # first: the one thing only this process can still record
        stop_process_tree(os.getpid())
    except BaseException as e:  # noqa: BLE001 - report, then exit all the same
        print(f"dd3g: stopping the orphaned step: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    finally:
        os._exit(1)


def stop_process_tree(pid: int, grace_s: float = GRACE_S) -> None:
    """SIGTERM every descendant of ``pid`` (not ``pid`` itself), then SIGKILL those alive after ``grace_s``."""
    import psutil  # a dependency of accelerate (always installed with dd3g)

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in reversed(children):  # deepest first: a launcher cannot respawn what it no longer sees
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=5)


def _mark_failed(instance, run_id: str | None, message: str) -> None:
    if instance is None or not run_id:
        print(f"dd3g: no Dagster instance in this step process; run {run_id} is left as it is", file=sys.stderr)
        return
    try:
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            instance.report_run_failed(run, message)
    except Exception as e:  # noqa: BLE001 - best effort: the storage may be gone with the coordinator
        print(f"dd3g: could not mark run {run_id} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
