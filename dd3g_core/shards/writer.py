"""Webdataset shard I/O with atomic publication and a validating manifest.

Layout of a published stage output directory::

    <dir>/shard-000000.tar      webdataset tar files (one sample = files sharing a __key__)
    <dir>/shard-000001.tar
    <dir>/manifest.json         files, sizes, sha256, sample counts, config, stage version

The directory is built under a temporary sibling and renamed only after the manifest is
written (:func:`dd3g_core.io.atomic_directory`), so a killed writer leaves nothing a reader
would accept. Samples are encoded to bytes by the caller's field names: ``.png`` from a
uint8 array, ``.json`` from a dict, ``.npy`` from an array (saved with ``allow_pickle=False``),
raw ``bytes`` as they are. Pickle-based extensions are refused on write and on read.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io import atomic_directory, atomic_write_json, sha256_file, stable_hash
from .rules import sample_key_problem

MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{:06d}.tar"
TAR_MTIME = 946684800.0  # 2000-01-01: tar member timestamps, fixed for reproducible shard bytes
PICKLE_EXTENSIONS = ("pth", "pt", "pyd", "pickle", "pkl", "mp", "msgpack")


class ShardValidationError(ValueError):
    """A published shard directory does not match its manifest (names the file and problem)."""


def encode_field(name: str, value: Any) -> bytes:
    ext = name.rsplit(".", 1)[-1].lower()
    if ext in PICKLE_EXTENSIONS:
        raise ValueError(f"refusing to write pickle-based field {name!r}; use .npy, .json or .safetensors")
    if isinstance(value, bytes):
        return value
    if ext == "png":
        arr = np.asarray(value)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise ValueError(f"{name}: PNG fields need a uint8 [H,W] / [H,W,C] array, got {arr.dtype} {arr.shape}")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()
    if ext == "json":
        return json.dumps(value, sort_keys=True, default=_json_default).encode()
    if ext == "npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        return buf.getvalue()
    if ext in ("txt", "cls"):
        return str(value).encode()
    raise ValueError(f"no encoder for field {name!r} of type {type(value).__name__}")


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@dataclass
class ShardSetSummary:
    directory: Path
    manifest: dict

    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def shard_paths(self) -> list[Path]:
        return [manifest_file(self.directory, f["name"]) for f in self.manifest["files"]]


def write_shards(
    samples: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    samples_per_shard: int = 256,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ShardSetSummary:
    """Write ``samples`` (dicts with ``__key__`` plus fields) as tar shards, atomically.

    ``config`` and ``extra`` are stored in the manifest (the resolved stage config and any
    stage-specific record such as rejected samples).
    """
    import webdataset as wds  # local: keeps `import dd3g_core` light

    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        files: list[dict] = []
        seen_keys: set[str] = set()
        writer, count_in_shard, shard_index = None, 0, 0

        def close_current():
            nonlocal writer
            if writer is not None:
                writer.close()
                path = tmp / SHARD_PATTERN.format(shard_index)
                files.append({"name": path.name, "samples": count_in_shard})
                writer = None

        for sample in samples:
            key = str(sample.get("__key__", ""))
            problem = sample_key_problem(key, seen_keys)  # the one key rule of every shard stage
            if problem:
                raise ValueError(problem)
            if writer is None:
                # fixed member mtime: the same samples give byte-identical shards (stable sha256 / DataVersion)
                writer = wds.TarWriter(str(tmp / SHARD_PATTERN.format(shard_index)), encoder=False, mtime=TAR_MTIME)
                count_in_shard = 0
            record = {"__key__": key}
            record.update({k: encode_field(k, v) for k, v in sample.items() if not k.startswith("__")})
            writer.write(record)
            count_in_shard += 1
            if count_in_shard >= samples_per_shard:
                close_current()
                shard_index += 1
        close_current()
        for f in files:
            p = tmp / f["name"]
            f["bytes"] = p.stat().st_size
            f["sha256"] = sha256_file(p)
        manifest = {
            "format": "dd3g-shards/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "num_samples": sum(f["samples"] for f in files),
            "num_shards": len(files),
            "files": files,
            "config": dict(config or {}),
            **dict(extra or {}),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return ShardSetSummary(out_dir, manifest)


def content_hash(summary_or_manifest: ShardSetSummary | dict) -> str:
    """Hash of a shard set's shard sha256s: its identity (the stages' ``DataVersion``)."""
    m = summary_or_manifest.manifest if isinstance(summary_or_manifest, ShardSetSummary) else summary_or_manifest
    return stable_hash([f["sha256"] for f in m.get("files", [])])


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a shard set, checked (:func:`check_manifest`): every reader goes through here."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ShardValidationError(f"{directory}: no {MANIFEST} (not a finished shard set)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardValidationError(f"{path}: manifest is not valid JSON ({e}); re-create the shard set") from None
    return check_manifest(manifest, path)


def check_manifest(manifest: Any, where: str | Path) -> dict:
    """``manifest`` (read from the file ``where``) if it has the structure readers rely on, else
    :class:`ShardValidationError` naming the field (never a ``KeyError``/``TypeError`` later). File names
    are confined to the manifest's directory (:func:`manifest_file`)."""

    def bad(field: str, problem: str) -> ShardValidationError:
        return ShardValidationError(f"{where}: {field} {problem}; the manifest is malformed, re-create the shard set")

    if not isinstance(manifest, dict):
        raise bad("the manifest", f"is a JSON {type(manifest).__name__}, not an object")
    if not _count(manifest.get("num_samples")):
        raise bad("'num_samples'", f"is {manifest.get('num_samples')!r}, not a count")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise bad("'files'", f"is {type(files).__name__}, not a list")
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise bad(f"files[{i}]", f"is a {type(f).__name__}, not an object")
        manifest_file(Path(where).parent, f.get("name"))
        for key, ok in (("bytes", _count), ("samples", _count), ("sha256", _sha256)):
            if not ok(f.get(key)):
                raise bad(f"files[{i}].{key}", f"is {f.get(key)!r}" + (" (missing)" if key not in f else ""))
    return manifest


def manifest_file(directory: str | Path, name: Any) -> Path:
    """``directory / name`` for a file name read from a manifest, refused unless it is a plain name
    inside ``directory`` (no absolute path, no ``..``, no separator): data never chooses what we open."""
    if not _file_name(name):
        raise ShardValidationError(
            f"{Path(directory) / MANIFEST}: file name {name!r} is not a plain name inside the shard set directory"
        )
    return Path(directory) / name


def _file_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and Path(name).name == name
    )


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def validate_shards(directory: str | Path, check_hashes: bool = True) -> ShardSetSummary:
    """Check every shard against the manifest: present, same size, same sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for f in manifest["files"]:
        p = manifest_file(directory, f["name"])
        if not p.is_file():
            raise ShardValidationError(f"{p}: listed in the manifest but missing")
        size = p.stat().st_size
        if size != f["bytes"]:
            raise ShardValidationError(f"{p}: {size} bytes, manifest says {f['bytes']} (truncated or replaced)")
        if check_hashes and sha256_file(p) != f["sha256"]:
            raise ShardValidationError(f"{p}: sha256 differs from the manifest (corrupt)")
    return ShardSetSummary(directory, manifest)


def iter_samples(directory: str | Path, decode: str = "rgba8", validate: bool = True) -> Iterator[dict]:
    """Iterate the samples of a shard set in order (evaluation / inspection; not shuffled).

    Images decode with ``decode`` (webdataset's ``"rgba8"`` keeps alpha: uint8 [H,W,4]);
    ``.npy`` loads without pickle; ``.json`` to dicts. Pickle extensions raise.
    """
    import webdataset as wds

    summary = validate_shards(directory) if validate else ShardSetSummary(Path(directory), read_manifest(directory))
    urls = [str(p) for p in summary.shard_paths]
    if not urls:
        return iter(())
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(_refuse_pickle).decode(decode, _decode_npy)
    return iter(ds)


def _refuse_pickle(sample: dict) -> dict:
    for k in sample:
        if not k.startswith("__") and k.rsplit(".", 1)[-1].lower() in PICKLE_EXTENSIONS:
            raise ValueError(f"sample {sample.get('__key__')!r} has pickle-based field {k!r}; refusing to decode")
    return sample


def _decode_npy(key: str, data: bytes):
    if key.lower().endswith(".npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    return None
