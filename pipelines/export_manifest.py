"""What a finished ``pepd_student`` run vouches for, and the check that makes its cache hit honest.

When the trainer has finished, the asset writes ``<run>/export_manifest.json``: the size and sha256 of
every exported file (``pepd/config.json``, ``pepd/model.safetensors``, ``pepd/model_raw.safetensors``)
and of ``result.json``. A later materialization of the same version is a cache hit only if
:func:`finished_run_problem` finds nothing wrong: ``result.json`` parses, is an object and says the run
reached its step count, the manifest parses and lists those files, every listed file is there with its
size and sha256, and the weights' hash in ``result.json`` is the one of ``pepd/model.safetensors``.
Anything else (a deleted or damaged file, a malformed ``result.json`` or manifest, a run finished
before manifests existed) is a reason, not an exception: the asset logs it and relaunches the trainer,
which resumes from the newest checkpoint and exports again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dd3g_core.io import atomic_write_json, sha256_file

__all__ = ["EXPORT_MANIFEST", "REQUIRED", "finished_run_problem", "read_result", "write_export_manifest"]

EXPORT_MANIFEST = "export_manifest.json"
RESULT = "result.json"
WEIGHTS = "pepd/model.safetensors"
REQUIRED = (RESULT, "pepd/config.json", WEIGHTS)  # a manifest without these vouches for too little


def _exported(run_dir: Path) -> list[str]:
    """Names (relative to the run directory) of the files a finished run vouches for."""
    pepd = run_dir / "pepd"
    names = [p.relative_to(run_dir).as_posix() for p in sorted(pepd.rglob("*")) if p.is_file()] if pepd.is_dir() else []
    return [*names, RESULT]


def write_export_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Record the size and sha256 of every exported file (and of ``result.json``) of a finished run."""
    run_dir = Path(run_dir)
    files = []
    for name in _exported(run_dir):
        path = run_dir / name
        files.append({"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    manifest = {"format": "dd3g-export/1", "files": files}
    atomic_write_json(run_dir / EXPORT_MANIFEST, manifest)
    return manifest


def _load_json(path: Path) -> tuple[Any, str]:
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        return json.loads(path.read_text()), ""
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path.name} is not valid JSON ({e})"


def read_result(run_dir: str | Path, steps: int) -> tuple[dict | None, str]:
    """``(result, "")`` if ``<run>/result.json`` is a finished run of ``steps`` steps with the fields the asset
    reads (``data_version``, ``metadata.weights_sha256``), else ``(None, why)``."""
    result, why = _load_json(Path(run_dir) / RESULT)
    if why:
        return None, why
    if not isinstance(result, dict):
        return None, f"{RESULT} is a JSON {type(result).__name__}, not an object"
    if result.get("step") != steps:
        return None, f"{RESULT} says step {result.get('step')!r}, this version trains {steps} steps"
    metadata = result.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("weights_sha256"), str):
        return None, f"{RESULT} has no metadata.weights_sha256"
    if not isinstance(result.get("data_version"), str):
        return None, f"{RESULT} has no data_version"
    return result, ""


def _manifest_problem(run_dir: Path, manifest: Any) -> str:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return f"{EXPORT_MANIFEST} is malformed (no 'files' list)"
    listed = {}
    for i, f in enumerate(manifest["files"]):
        name = f.get("name") if isinstance(f, dict) else None
        if not isinstance(name, str) or not name or name.startswith("/") or ".." in Path(name).parts:
            return f"{EXPORT_MANIFEST}: files[{i}] has no plain relative name"
        if not isinstance(f.get("bytes"), int) or not isinstance(f.get("sha256"), str):
            return f"{EXPORT_MANIFEST}: files[{i}] ({name}) has no bytes / sha256"
        listed[name] = f
    missing = [n for n in REQUIRED if n not in listed]
    if missing:
        return f"{EXPORT_MANIFEST} does not list {missing}"
    for name, f in listed.items():
        path = run_dir / name
        if not path.is_file():
            return f"{name} is missing (deleted?)"
        size = path.stat().st_size
        if size != f["bytes"]:
            return f"{name} has {size} bytes, the manifest says {f['bytes']} (truncated or replaced)"
        if sha256_file(path) != f["sha256"]:
            return f"{name}: sha256 differs from the manifest (damaged or replaced)"
    return ""


def finished_run_problem(run_dir: str | Path, steps: int) -> tuple[dict | None, str]:
    """``(result, "")`` if ``run_dir`` holds a finished run of ``steps`` steps whose files all match its export
    manifest, else ``(None, why)`` (never an exception for a missing, damaged or malformed file)."""
    run_dir = Path(run_dir)
    result, why = read_result(run_dir, steps)
    if why:
        return None, why
    manifest, why = _load_json(run_dir / EXPORT_MANIFEST)
    if not why:
        why = _manifest_problem(run_dir, manifest)
    if why:
        return None, why
    weights = next(f["sha256"] for f in manifest["files"] if f["name"] == WEIGHTS)
    named = result["metadata"]["weights_sha256"]
    if named != weights:
        return None, f"{RESULT} names weights {named[:16]}, but {WEIGHTS} is {weights[:16]}"
    return result, ""
