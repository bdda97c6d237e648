"""How every dd3g command line reports a failure: one mechanism, :func:`run_guarded`.

* **Expected failures** — a bad input the user can fix (missing or corrupt file, bad option value,
  wrong config) — print exactly one line ``PROG: error: <message>`` to stderr and exit with
  :data:`EXIT_USAGE` (2), no traceback. Expected means (:func:`is_expected`): ``ValueError``
  (which includes ``json.JSONDecodeError``, ``UnicodeDecodeError`` and dd3g's ``ImageLoadError``,
  ``ConfigMismatchError``, ...), ``OSError`` (missing, unreadable or unwritable files, PIL's
  ``UnidentifiedImageError``), ``ImportError`` (an optional dependency is missing), ``EOFError``
  (truncated data), ``MemoryError``, ``pickle.UnpicklingError`` (a corrupt or refused pickle),
  PIL's ``DecompressionBombError``, safetensors' ``SafetensorError``, and every exception class
  defined in ``dd3g_core`` itself (the project raises those on purpose, with a message written
  for the user).
* **Anything else is a bug**: one line ``PROG: internal error: <message>; the traceback is in
  <log>; please report it ...`` and exit :data:`EXIT_INTERNAL` (1). The full traceback, the
  command line and the versions go to a new log file under ``$XDG_STATE_HOME/dd3g/`` (default
  ``~/.local/state/dd3g/``), falling back to the system temp folder; if no log can be written
  the traceback is printed after the line instead, so it is never lost.
* Ctrl-C prints ``PROG: interrupted`` and exits 130; a closed stdout pipe (``dd3g ... | head``)
  exits 0 quietly.
"""

from __future__ import annotations

import datetime
import os
import platform
import select
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from pickle import UnpicklingError  # the exception type only: nothing is ever unpickled here

__all__ = [
    "CLIError",
    "EXIT_INTERNAL",
    "EXIT_USAGE",
    "REPORT_TO",
    "crash_log_dir",
    "is_expected",
    "one_line",
    "run_guarded",
]

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
REPORT_TO = "the dd3g issue tracker (attach the log file)"
MAX_INTERNAL_MESSAGE = 300  # characters of an unexpected error's message shown on the one line


class CLIError(Exception):
    """An expected, user-facing failure: printed as one line, exit code 2."""


def _library_error_types() -> tuple[type[BaseException], ...]:
    """Third-party exception classes that mean "this input is bad" (imported only if installed)."""
    found: list[type[BaseException]] = []
    try:
        from PIL import Image

        found.append(Image.DecompressionBombError)
    except ImportError:
        pass
    try:
        from safetensors import SafetensorError

        found.append(SafetensorError)
    except ImportError:
        pass
    return tuple(found)


EXPECTED_TYPES: tuple[type[BaseException], ...] = (
    CLIError,
    ValueError,
    OSError,
    ImportError,
    EOFError,
    MemoryError,
    UnpicklingError,  # a corrupt or refused (weights_only) pickle in a checkpoint
)


def is_expected(error: BaseException) -> bool:
    """True for a failure caused by the input or the environment (see the module docstring)."""
    if isinstance(error, EXPECTED_TYPES + _library_error_types()):
        return True
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA), without importing torch
        return True
    return any(cls.__module__ == "dd3g_core" or cls.__module__.startswith("dd3g_core.") for cls in type(error).__mro__)


def one_line(error: BaseException, limit: int | None = None) -> str:
    """The error's message on one line (whitespace runs collapsed); its class name if it has none."""
    text = " ".join(str(error).split())
    if isinstance(error, MemoryError | EOFError) or not text:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
        if isinstance(error, MemoryError):
            text = f"out of memory ({text}); try smaller sizes (--resolution, --frames, a smaller image)"
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def crash_log_dir() -> Path:
    """``$XDG_STATE_HOME/dd3g`` (default ``~/.local/state/dd3g``): where internal errors are logged."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "dd3g"


def _write_crash_log(error: BaseException, prog: str, argv: Sequence[str] | None) -> Path | None:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"crash-{stamp}-{os.getpid()}.log"
    try:
        from importlib.metadata import version

        dd3g_version = version("dd3g")
    except Exception:  # not installed as a distribution
        dd3g_version = "unknown"
    text = "".join(
        [
            f"{prog} internal error at {datetime.datetime.now().isoformat(timespec='seconds')}\n",
            f"command: {' '.join([prog, *(sys.argv[1:] if argv is None else list(argv))])}\n",
            f"cwd: {os.getcwd()}\n",
            f"dd3g {dd3g_version}, python {platform.python_version()}, {platform.platform()}\n\n",
            *traceback.format_exception(type(error), error, error.__traceback__),
        ]
    )
    for folder in (crash_log_dir(), Path(tempfile.gettempdir()) / "dd3g"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def _stdout_is_closed() -> bool:
    """Whether stdout is a pipe nobody reads any more (then a BrokenPipeError is not a failure)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        if any(events & select.POLLERR for _, events in poll.poll(0)):
            return True
    except (AttributeError, OSError, ValueError):  # no poll() (Windows) or no real stdout (tests)
        pass
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    return False


def run_guarded(func: Callable[[], int | None], prog: str = "dd3g", argv: Sequence[str] | None = None) -> int:
    """Run ``func`` and turn every exception into the exit code and the one line described above."""
    try:
        return int(func() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError as e:
        if _stdout_is_closed():  # e.g. `dd3g world show-spec --seed 3 | head`
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter's final flush quiet
            return 0
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        if is_expected(e):
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
            return EXIT_USAGE
        log = _write_crash_log(e, prog, argv)
        message = f"{type(e).__name__}: {one_line(e, MAX_INTERNAL_MESSAGE)}"
        if log is None:
            print(f"{prog}: internal error: {message}; please report it to {REPORT_TO}", file=sys.stderr)
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        else:
            print(
                f"{prog}: internal error: {message}; the traceback is in {log}; please report it to {REPORT_TO}",
                file=sys.stderr,
            )
        return EXIT_INTERNAL
