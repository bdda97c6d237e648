"""The ``folder`` source of ``rgba_images``: distil on the user's own images (docs/own_data.md).

    folder or glob -> list -> partition by hash(relative path) -> decode -> the image's own alpha,
        or the configured matting -> the stage's filters -> recentre -> shard writer

Everything after the alpha is what the generated sources do (:func:`.postprocess.filter_and_recentre`,
:func:`dd3g_core.shards.write_shards`); this module owns what is particular to a folder:

* **Listing** (:func:`list_images`): a folder is searched recursively for ``IMAGE_SUFFIXES`` (any case),
  hidden files and folders (``.*``) skipped; a glob (``*``, ``?``, ``[``; ``**`` recurses) takes every
  file it matches; a single file is itself. Each image's identity is its path relative to the folder
  (for a glob: to the folder before its first wildcard), ``/``-separated, Unicode NFC, so moving or
  copying the folder to another disk or machine keeps every identity. Nothing listed is one
  :class:`NoImagesError` naming the path.
* **Partitions**: image ``rel`` goes to shard ``sha256(rel) mod num_shards``. It depends on nothing but
  its own path, so adding, removing or changing images touches only the partitions they hash into. A
  partition no image hashes into is published empty. The sample key is the file's stem reduced to
  ``[A-Za-z0-9_-]`` plus 12 hex digits of ``sha256(rel)`` (unique, and a valid shard key).
* **Cache key**: the stage version covers the settings, not the folder (see :mod:`.config`); each
  partition records the images it was built from (``inputs``: relative path, sha256, bytes) and their
  hash ``inputs_hash``. A published partition is a cache hit when it validates and its ``inputs_hash``
  equals that of the images that hash into it now. Its bytes are then untouched, so its content hash,
  and with it the downstream ``teacher_trajectories`` partition (same version directory, same upstream
  content hash), stay cache hits too. Checking a partition reads its own images once (sha256), the
  same order of work as validating its tar files.
* **Decoding** (:func:`dd3g_core.synthesis.load_image_rgba` on the bytes that were hashed): PNG, JPEG,
  WebP and whatever else Pillow reads; 16-bit scaled to 8 bits, CMYK and palettes converted to RGB,
  EXIF rotation applied, longer side reduced to ``max(1024, 4 x resolution)`` while decoding. An image
  with a real alpha (an alpha channel that is not opaque everywhere) keeps it; any other goes through
  the configured matting (``colorkey`` or ``rembg``).
* **Rejects**: every unusable file is one record in the manifest's ``rejected`` (``key``, ``path``,
  ``stage``, ``reasons: [{"filter": ...}]``, ``error``) and the run goes on. ``stage`` ``load``:
  ``unreadable``, ``empty_file``, ``unrecognised``, ``corrupt``, ``decompression_bomb``,
  ``all_transparent``, ``animated`` (more than one frame), ``too_small`` (a side under
  :data:`MIN_SIDE`); ``filter``: the stage's quality filters (``empty``, ``coverage_low``,
  ``coverage_high``, ``touches_border``, ``background_not_plain``); ``process``: an exception.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..io import cached_sha256s, stable_hash
from ..progress import Progress
from ..shards import ShardSetSummary, write_shards
from ..shards.rules import check_reject_share, sample_key_problem
from .config import CODE_VERSION, STAGE, RGBASynthesisConfig, shard_dir, stage_version
from .image_io import ImageLoadError, load_image_rgba
from .matting import MattingResult
from .postprocess import filter_and_recentre

__all__ = [
    "IMAGE_SUFFIXES",
    "MIN_SIDE",
    "FolderImage",
    "FolderSource",
    "NoImagesError",
    "folder_fingerprint",
    "list_images",
    "synthesize_folder_shard",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
MIN_SIDE = 8  # the smallest side the trajectory stage takes (trajectories.cache.MIN_IMAGE_SIZE)
_GLOB_MAGIC = re.compile(r"[*?[]")
_KEY_UNSAFE = re.compile(r"[^0-9A-Za-z_-]+")
_log = logging.getLogger(__name__)


class NoImagesError(FileNotFoundError):
    """The folder or glob of an ``rgba_images`` folder source holds no image (the message names it)."""


@dataclass(frozen=True)
class FolderImage:
    path: Path  # where the file is now
    rel: str  # its identity: posix path relative to the folder, NFC

    @cached_property
    def _digest(self) -> bytes:
        return hashlib.sha256(self.rel.encode("utf-8")).digest()

    @property
    def key(self) -> str:
        stem = _KEY_UNSAFE.sub("_", Path(self.rel).stem).strip("_")[:32] or "image"
        return f"{stem}-{self._digest.hex()[:12]}"

    def shard(self, num_shards: int) -> int:
        return int.from_bytes(self._digest[:8], "big") % num_shards


def _identity(path: Path, root: Path) -> str:
    return unicodedata.normalize("NFC", path.relative_to(root).as_posix())


def list_images(spec: str) -> list[FolderImage]:
    """The images of a folder, a glob or a single file, sorted by identity (module docstring)."""
    path = Path(spec).expanduser()
    if path.is_file():  # an existing path is taken literally, even with a "[" in its name
        found, what = [FolderImage(path, _identity(path, path.parent))], ""
    elif path.is_dir():
        found = [
            FolderImage(f, _identity(f, path))
            for f in path.rglob("*")
            if f.suffix.lower() in IMAGE_SUFFIXES
            and f.is_file()
            and not any(p.startswith(".") for p in f.relative_to(path).parts)
        ]
        what = f"the folder {path} holds no image file ({', '.join(sorted(IMAGE_SUFFIXES))}; hidden ones skipped)"
    elif _GLOB_MAGIC.search(str(path)):
        parts = path.parts
        fixed = next(i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part))
        root = Path(*parts[:fixed]) if fixed else Path(".")
        files = [Path(p) for p in glob.glob(str(path), recursive=True)]
        found = [FolderImage(f, _identity(f, root)) for f in files if f.is_file()]
        what = f"the glob {spec!r} matches no file"
    else:
        raise NoImagesError(f"rgba folder source: {path} does not exist (give a folder, a glob or an image file)")
    if not found:
        raise NoImagesError(f"rgba folder source: {what}")
    return sorted(found, key=lambda im: im.rel)


def folder_fingerprint(spec: str, cache: str | Path | None = None) -> dict:
    """Identity of a folder source's images (relative paths + contents), for the nightly retrain: it
    changes when an image is added, removed, renamed or changed, and not otherwise. ``cache``: a JSON
    file of sha256s by (path, size, mtime) (:func:`dd3g_core.io.cached_sha256s`), so a tick costs a
    ``stat`` per unchanged image."""
    images = list_images(spec)
    digests = cached_sha256s([im.path for im in images], cache)
    return {"images": len(images), "sha256": stable_hash([[im.rel, d] for im, d in zip(images, digests)], 64)}


class FolderSource:
    """The ``generator`` of a folder config: lists the images once (per run) and says which go where."""

    name = "folder"

    def __init__(self, spec: str):
        self.spec = str(spec)

    @cached_property
    def images(self) -> list[FolderImage]:
        return list_images(self.spec)

    def shard_images(self, shard_index: int, num_shards: int) -> list[FolderImage]:
        return [im for im in self.images if im.shard(num_shards) == shard_index]

    def describe(self) -> dict:
        """What the samples record: no path, so moving the folder does not change a byte."""
        return {"name": self.name, "min_side": MIN_SIDE, "assign": "sha256(relative path) mod num_shards"}


class _Rejected(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _read(image: FolderImage) -> bytes:
    try:
        return image.path.read_bytes()
    except OSError as e:
        raise _Rejected("unreadable", f"cannot read the file ({type(e).__name__}: {e})") from None


def _read_or_none(image: FolderImage) -> bytes | None:
    try:
        return _read(image)
    except _Rejected:
        return None


def _input_record(image: FolderImage, data: bytes | None) -> dict:
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    return {"path": image.rel, "sha256": digest, "bytes": None if data is None else len(data)}


def _decode(data: bytes, max_side: int) -> tuple[np.ndarray, dict]:  # uint8 [H, W, 4], image info
    try:
        rgba, info = load_image_rgba(data, max_side=max_side, return_info=True)
    except ImageLoadError as e:
        reason = "empty_file" if e.reason == "empty" else e.reason
        raise _Rejected(reason, str(e).removeprefix(f"<{len(data)} bytes>: ")) from None
    if info.frames > 1:
        raise _Rejected("animated", f"an animated image ({info.frames} frames) is not one object view")
    w, h = info.full_size or info.size
    if min(w, h) < MIN_SIDE:
        raise _Rejected("too_small", f"{w}x{h} pixels, smaller than {MIN_SIDE}x{MIN_SIDE}")
    record = info.to_dict()
    record.pop("source")  # "<N bytes>": the file's identity is its path and sha256
    return rgba, record


def _load_reject(e: _Rejected) -> dict:
    return {"stage": "load", "reasons": [{"filter": e.reason}], "error": str(e)}


def process_file(
    config: RGBASynthesisConfig, matting: Callable[[], object], data: bytes, base: dict
) -> tuple[dict | None, dict | None]:
    """(sample, None) or (None, why: ``{stage, reasons, error or stats}``) for one file's bytes; ``base``:
    the sample json's identity fields; ``matting()``: the matting backend, built on first use."""
    try:
        rgba, info = _decode(data, max(1024, 4 * config.resolution))
    except _Rejected as e:
        return None, _load_reject(e)
    record = {**base, "input": info}
    if info["had_alpha"] and int(rgba[..., 3].min()) < 255:  # a real alpha: the user's own cut-out
        matted = MattingResult(rgba, {"alpha_from": "input"})
        record.update(matting="input_alpha", matting_config={"name": "input_alpha"}, alpha_source="input")
    else:
        backend = matting()
        matted = backend.matte(np.ascontiguousarray(rgba[..., :3]))
        record.update(matting=backend.name, matting_config=backend.describe(), alpha_source="matting")
    record["matting_info"] = matted.info
    sample, reasons, stats = filter_and_recentre(config, matted, record)
    if sample is None:
        return None, {"stage": "filter", "reasons": reasons, "stats": stats}
    return sample, None


def _inputs_hash(inputs: list[dict]) -> str:
    return stable_hash([[r["path"], r["sha256"]] for r in inputs])


def synthesize_folder_shard(
    data_root: str | Path,
    config: RGBASynthesisConfig,
    shard_index: int,
    *,
    backends=None,
    max_reject_share: float | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[ShardSetSummary, bool]:
    """Build (or reuse) partition ``shard_index`` of a folder config: ``(summary, cache_hit)``. The same
    contract as :func:`.stage.synthesize_shard` (which calls this), with the cache key of the module doc."""
    from .stage import SynthesisBackends, reusable_partition

    config = config.resolved()
    version = stage_version(config)
    out = shard_dir(data_root, config, shard_index)
    backends = backends or SynthesisBackends(config)
    source: FolderSource = backends.generator
    images = source.shard_images(shard_index, config.num_shards)
    wanted = _inputs_hash([_input_record(im, _read_or_none(im)) for im in images])  # what the partition holds now
    summary = reusable_partition(out, shard_index, max_reject_share, lambda m: m.get("inputs_hash") == wanted)
    if summary is not None:
        return summary, True

    progress = Progress(f"{STAGE} shard {int(shard_index):05d}", len(images), log or _log.info)
    samples, rejected, inputs, errors, seen, built = [], [], [], 0, set(), []
    generator = source.describe()

    def matting():  # rembg loads only if some image has no alpha of its own
        if not built:
            built.append(backends.matting)
        return built[0]

    for im in images:
        sample, why = None, None
        try:
            data = _read(im)
        except _Rejected as e:
            data, why = None, _load_reject(e)
        inputs.append(_input_record(im, data))
        head = {"key": im.key, "path": im.rel, "sha256": inputs[-1]["sha256"]}
        problem = sample_key_problem(im.key, seen)
        if why is None and problem is not None:
            why = {"stage": "key", "reasons": [{"filter": "bad_key"}], "error": problem}
        if why is None:
            base = {
                **head,
                "shard_index": shard_index,
                "source": "folder",
                "generator": "folder",
                "generator_config": generator,
                "code_version": CODE_VERSION,
                "stage_version": version,
            }
            try:
                sample, why = process_file(config, matting, data, base)
            except Exception as e:  # noqa: BLE001 - one bad image is a recorded reject, the run goes on
                errors += 1
                why = {"stage": "process", "reasons": [{"filter": "exception"}], "error": f"{type(e).__name__}: {e}"}
        if sample is not None:
            samples.append(sample)
        else:
            rejected.append({**head, **why})
            _log.info("rejected %s (%s): %s", im.rel, why["stage"], why["reasons"])
        progress.update(1)
    progress.close(f"{len(samples)} accepted, {len(rejected)} rejected")
    if images and errors == len(images):  # a systematic failure (a broken matting) is not cached as "all rejected"
        raise RuntimeError(f"every image of shard {shard_index} failed; first: {rejected[0]['error']}")
    if max_reject_share is not None:  # before anything is written: a failed partition is never published
        check_reject_share(STAGE, shard_index, len(samples), len(images), rejected, max_reject_share)
    coverage = [s["json"]["alpha_coverage"] for s in samples]
    extra = {
        "stage": STAGE,
        "stage_version": version,
        "shard_index": shard_index,
        "inputs": inputs,
        "inputs_hash": _inputs_hash(inputs),
        "attempted": len(images),
        "accepted": len(samples),
        "rejected": rejected,
        "num_rejected": len(rejected),
        "alpha_from_input": sum(s["json"]["alpha_source"] == "input" for s in samples),
        "generator": {**generator, "folder": config.folder},
        "matting_backend": built[0].describe() if built else {"name": config.matting, "used": False},
        **({"alpha_coverage_mean": float(np.mean(coverage))} if coverage else {}),
    }
    summary = write_shards(
        samples,
        out,
        samples_per_shard=config.samples_per_shard,
        config={"stage": STAGE, "code_version": CODE_VERSION, **config.to_record()},
        extra=extra,
    )
    return summary, False
