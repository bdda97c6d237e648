"""Atomic file-system helpers and content hashing shared by every stage.

A stage never leaves a half-written output where a reader could take it for a finished one:
files are written to a temporary sibling and ``os.replace``d; directories are built under a
``.tmp-*`` sibling and renamed into place only once complete (with their manifest).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a json-serialisable object, independent of dict ordering."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    ``suffix`` keeps the extension for writers that infer the format from the name.
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; published files follow the umask
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it.

    ``os.umask`` can only be read by setting it: flipping it to 0 for a moment gives a file that
    another thread creates in that moment mode 0666. Linux reports it in ``/proc/self/status``;
    elsewhere a probe file created with mode 0777 shows it; the flip (under a lock, so at least
    two of our own readers never race) is the last resort.
    """
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with contextlib.suppress(OSError), tempfile.TemporaryDirectory(prefix=TMP_PREFIX + "umask.") as d:
        probe = os.path.join(d, "probe")
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o777))
        return 0o777 & ~os.stat(probe).st_mode
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # stricter, not 0: a concurrent file is too private rather than world-writable
        os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary sibling and rename it to ``path`` when done.

    Stale temporaries of killed writers (same target name) are cleared first. If ``path``
    already exists it is replaced (the caller decides whether that is a cache hit).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{TMP_PREFIX}{path.name}.*"):
        if stale.is_dir() and not _owner_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.{os.getpid()}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _publish_permissions(tmp)
        if path.exists():
            old = path.with_name(f"{TMP_PREFIX}{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish_permissions(root: Path) -> None:
    """Files some writers create privately (mkstemp, safetensors: 0600) follow the umask once
    published, like any other output of the stage."""
    mode = 0o666 & ~_umask()
    for p in root.rglob("*"):
        if p.is_file():
            os.chmod(p, mode)


def _owner_alive(tmp_dir: Path) -> bool:
    """A temp dir is named ``.tmp-<name>.<pid>.<random>``: is that writer still running?"""
    parts = tmp_dir.name.split(".")
    try:
        pid = int(parts[-2])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cached_sha256s(paths: list[Path], cache: str | os.PathLike | None = None) -> list[str]:
    """The sha256 of each file of ``paths``, in order. ``cache``: a JSON file remembering each file's
    sha256 by (resolved path, size, mtime), so re-hashing files that did not change costs a ``stat``
    each; it is rewritten to hold exactly these files (give each set of files its own cache file)."""
    known: dict = {}
    if cache is not None and Path(cache).is_file():
        with contextlib.suppress(ValueError, OSError):
            known = json.loads(Path(cache).read_text())
    known = known if isinstance(known, dict) else {}
    digests, fresh = [], {}
    for p in paths:
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = known.get(key) if isinstance(known.get(key), str) else None
        fresh[key] = digest = digest or sha256_file(p)
        digests.append(digest)
    if cache is not None and fresh != known:
        with contextlib.suppress(OSError):
            atomic_write_json(cache, fresh)
    return digests


def tree_sha256(root: str | os.PathLike, cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Content identity of a folder (a teacher, a model): sha256 over every file's relative path and
    sha256, in path order; hidden files (``.*``) are skipped. Returns ``{"sha256", "files", "bytes"}``.

    ``cache``: a JSON file remembering each file's sha256 by (path, size, mtime), so re-hashing a
    multi-GB weights folder whose files did not change costs a ``stat`` per file (:func:`cached_sha256s`).
    """
    root = Path(root)
    files = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    digests = cached_sha256s(files, cache)
    entries = [[p.relative_to(root).as_posix(), d] for p, d in zip(files, digests)]
    total = sum(p.stat().st_size for p in files)
    blob = json.dumps(entries, separators=(",", ":")).encode()
    return {"sha256": hashlib.sha256(blob).hexdigest(), "files": len(entries), "bytes": total}


# ------------------------------------------------------------------------------ run directory lock


class LockedError(RuntimeError):
    """Another live process holds a :func:`run_lock` (the message names its pid and host)."""


_HELD: set[str] = set()  # lock files held by this process (POSIX locks never conflict within one)
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def run_lock(path: str | os.PathLike, what: str = "run directory") -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``path`` (a lock file) for the ``with`` block, or raise
    :class:`LockedError` naming the owner's pid and host.

    A POSIX record lock (``fcntl.lockf``), not ``flock``: the kernel drops it when its process dies,
    so the lock of a killed run never blocks the next one, and forked children (DataLoader workers)
    do not inherit it, so a dead trainer's lingering worker cannot hold the run hostage. The file
    itself stays, holding the last owner's ``{"pid", "host", "since"}`` for the message.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _HELD_GUARD:
        if key in _HELD:
            raise LockedError(
                f"{path.parent}: this process (pid {os.getpid()}) already holds the {what} lock {path.name}; "
                "one run per directory"
            )
        _HELD.add(key)
    fd = -1
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN / EACCES: a live process holds it
            owner = _lock_owner(fd)
            raise LockedError(
                f"{path.parent}: another dd3g process (pid {owner.get('pid', '?')} on {owner.get('host', '?')}, "
                f"since {owner.get('since', '?')}) is writing this {what}; wait for it to finish or use another "
                "directory"
            ) from None
        os.ftruncate(fd, 0)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        yield path
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock (closing any fd of the file would: nothing else opens it)
        with _HELD_GUARD:
            _HELD.discard(key)


def _lock_owner(fd: int) -> dict:
    with contextlib.suppress(OSError, ValueError):
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        if isinstance(owner, dict):
            return owner
    return {}
