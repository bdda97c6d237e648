"""The multi-process training reader for dd3g shard sets (decoding without pickle).

``make_train_loader`` is the multi-process reader for training. Per process (DDP rank) and per
DataLoader worker it draws shards *with replacement* (``resampled=True``): every worker has an
endless, independently seeded shard stream, so no rank or worker ever runs dry at the end of an
epoch (the hang risk of ``split_by_node`` over a finite list, ENVIRONMENT.md). ``with_epoch(n)``
then cuts each worker's stream after ``n`` samples, so one epoch of the loader yields
``num_workers * n`` samples on each rank (``n`` = ``epoch_samples`` counts per worker; with
``num_workers=0`` the main process is the one worker). Samples are shuffled in a buffer of
``shuffle_buffer`` samples per worker.

Decoding never touches pickle: a field with a pickle-based extension (``.pth``, ``.pyd``,
``.pickle``, ...) raises :class:`PickleFieldError`, which is fatal (a shard set with such fields
is malformed, not corrupt). A sample that fails to decode (truncated PNG, bad ``.npy``,
invalid JSON) or a tar member that cannot be read is skipped and recorded by :class:`SkipRecorder`:
logged as a warning, counted, its key and reason kept (in the process that saw it; DataLoader
workers are separate processes, so pass ``skip_log`` to collect them from all workers as JSON lines).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .writer import (
    MANIFEST,
    PICKLE_EXTENSIONS,
    ShardSetSummary,
    ShardValidationError,
    read_manifest,
    validate_shards,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "ppm", "bmp", "tif", "tiff")
MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are refused before decoding (decompression bombs)
DECODE_MODES = ("rgba8", "rgb8", "pilrgba", "raw")


class PickleFieldError(ValueError):
    """A sample carries a pickle-based field (never decoded; fatal for the reader)."""


class SampleDecodeError(ValueError):
    """One sample could not be decoded (the reader skips and records it)."""

    def __init__(self, key: str, field: str, reason: str):
        super().__init__(f"sample {key!r} field {field!r}: {reason}")
        self.key, self.field, self.reason = key, field, reason


class SkipRecorder:
    """A webdataset ``handler`` that skips a failing sample and records it (like
    ``wds.warn_and_continue``, but it keeps the key and the reason). Pickle fields re-raise.

    ``skipped``: list of ``{"key", "field", "reason", "pid"}`` seen in this process;
    ``skip_log``: optional path, one JSON line appended per skip (shared by all workers).
    """

    def __init__(self, skip_log: str | Path | None = None):
        self.skipped: list[dict] = []
        self.skip_log = None if skip_log is None else str(skip_log)
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.skipped)

    def __call__(self, exn: BaseException) -> bool:
        if isinstance(exn, PickleFieldError):
            raise exn
        if isinstance(exn, SampleDecodeError):
            rec = {"key": exn.key, "field": exn.field, "reason": exn.reason}
        else:  # tar / grouping errors: webdataset puts the url in the args when it knows it
            rec = {"key": None, "field": None, "reason": f"{type(exn).__name__}: {exn}"}
        rec["pid"] = os.getpid()
        logger.warning("skipping corrupt sample: %s", rec)
        with self._lock:
            self.skipped.append(rec)
            if self.skip_log is not None:
                with open(self.skip_log, "a") as f:  # one short line per O_APPEND write: safe across workers
                    f.write(json.dumps(rec) + "\n")
        return True

    def __getstate__(self):  # picklable for DataLoader workers (each gets its own list)
        return {"skipped": [], "skip_log": self.skip_log}

    def __setstate__(self, state):
        self.skipped, self.skip_log = state["skipped"], state["skip_log"]
        self._lock = threading.Lock()


def read_skip_log(path: str | Path) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def decode_image(data: bytes, mode: str = "rgba8", max_pixels: int = MAX_IMAGE_PIXELS):
    """PNG/JPEG bytes -> uint8 [H, W, 4] (``rgba8``), [H, W, 3] (``rgb8``) or a PIL RGBA image
    (``pilrgba``). Any mode (gray, palette, 16-bit, CMYK) converts; images above ``max_pixels``
    are refused before their pixels are decoded."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    if w * h > max_pixels:
        raise ValueError(f"image of {w}x{h} pixels exceeds the {max_pixels}-pixel limit (decompression bomb?)")
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: scale to 8 bits, not clip
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "pilrgba":
        return img.convert("RGBA")
    if mode == "rgba8":
        return np.asarray(img.convert("RGBA"), dtype=np.uint8).copy()
    if mode == "rgb8":
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    raise ValueError(f"unknown image decode mode {mode!r}; choose from {DECODE_MODES}")


def decode_sample(sample: Mapping[str, Any], decode: Any = "rgba8") -> dict:
    """Decode one raw webdataset sample (bytes per field) without pickle.

    ``decode``: one of :data:`DECODE_MODES` for images, or a callable ``(field, bytes) -> value | None``
    tried first (``None`` falls back to the built-in decoders). ``.npy`` -> ``np.load(allow_pickle=False)``,
    ``.json`` -> dict, ``.txt``/``.cls`` -> str, unknown extensions stay bytes.
    """
    key = str(sample.get("__key__"))
    custom = decode if callable(decode) else None
    mode = "rgba8" if custom is not None else decode
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decode {decode!r}; choose from {DECODE_MODES} or pass a callable")
    out: dict = {}
    for name, value in sample.items():
        if name.startswith("__"):
            out[name] = value
            continue
        ext = name.rsplit(".", 1)[-1].lower()
        if ext in PICKLE_EXTENSIONS:
            raise PickleFieldError(
                f"sample {key!r} has pickle-based field {name!r}; refusing to decode "
                f"(store arrays as .npy, tensors as .safetensors)"
            )
        try:
            if custom is not None and (v := custom(name, value)) is not None:
                out[name] = v
            elif ext in IMAGE_EXTENSIONS:
                out[name] = value if mode == "raw" else decode_image(value, mode)
            elif ext == "npy":
                out[name] = np.load(io.BytesIO(value), allow_pickle=False)
            elif ext == "json":
                out[name] = json.loads(value)
            elif ext in ("txt", "cls"):
                out[name] = value.decode("utf-8")
            else:
                out[name] = value
        except PickleFieldError:
            raise
        except Exception as e:  # noqa: BLE001 - anything a corrupt field can raise
            raise SampleDecodeError(key, name, f"{type(e).__name__}: {e}") from e
    return out


def resolve_shard_urls(urls_or_dir: Any, validate: bool = True) -> list[str]:
    """Tar paths from: a shard-set directory (has ``manifest.json``), a directory of shard-set
    directories (e.g. ``teacher_trajectories/<version>/`` with one ``shard-NNNNN/`` per partition),
    a ``.tar`` path / brace pattern, or a list of any of these. Shard sets are validated against
    their manifests (size + sha256) when ``validate``."""
    items = [urls_or_dir] if isinstance(urls_or_dir, (str, os.PathLike)) else list(urls_or_dir)
    urls: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            if (p / MANIFEST).is_file():
                sets = [p]
            else:
                sets = sorted(d for d in p.iterdir() if d.is_dir() and (d / MANIFEST).is_file())
                if not sets:
                    raise ShardValidationError(
                        f"{p}: neither a shard set (no {MANIFEST}) nor a directory of shard sets"
                    )
            for d in sets:
                summary = validate_shards(d) if validate else ShardSetSummary(d, read_manifest(d))
                urls.extend(str(s) for s in summary.shard_paths)
        else:
            import braceexpand

            urls.extend(braceexpand.braceexpand(str(item)))
    if not urls:
        raise ShardValidationError(f"no shards found in {urls_or_dir!r}")
    return urls


def collate_samples(samples: list[dict]) -> dict:
    """Batch decoded samples: arrays of equal shape stack into a torch tensor [B, ...]; anything
    else (json dicts, strings, ragged arrays) stays a list."""
    import torch

    out: dict = {}
    for k in samples[0]:
        vals = [s.get(k) for s in samples]
        if all(isinstance(v, np.ndarray) for v in vals) and len({(v.shape, v.dtype) for v in vals}) == 1:
            out[k] = torch.from_numpy(np.stack(vals))
        else:
            out[k] = vals
    return out


def make_train_dataset(
    urls_or_dir: Any,
    epoch_samples: int,
    shuffle_buffer: int = 256,
    seed: int = 0,
    decode: Any = "rgba8",
    handler: SkipRecorder | None = None,
    validate: bool = True,
):
    """The webdataset pipeline behind :func:`make_train_loader` (yields single decoded samples).

    Shards are resampled with a deterministic per-(rank, worker, epoch) seed derived from ``seed``."""
    import webdataset as wds

    if epoch_samples < 1:
        raise ValueError("epoch_samples (per worker) must be >= 1")
    urls = resolve_shard_urls(urls_or_dir, validate=validate)
    handler = handler if handler is not None else SkipRecorder()
    ds = wds.WebDataset(
        urls,
        resampled=True,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        shardshuffle=False,
        empty_check=False,
        handler=handler,
        seed=seed,
    )
    # webdataset's resampled list draws a non-reproducible seed; make it a function of `seed`
    # (and of rank, worker and epoch, which ResampledShards mixes in itself).
    ds.pipeline[0] = wds.ResampledShards(urls, seed=seed, deterministic=True, empty_check=False)
    ds = ds.map(lambda s: decode_sample(s, decode), handler=handler)
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 64), rng=_WorkerRandom(seed))
    ds.skip_recorder = handler
    return ds.with_epoch(epoch_samples)


class _WorkerRandom(random.Random):
    """A ``random.Random`` seeded lazily from (seed, rank, worker) on first use in the worker."""

    def __init__(self, seed: int):
        self._base, self._seeded = int(seed), False
        super().__init__(seed)

    def _ensure(self):
        if not self._seeded:
            from webdataset import utils

            self.seed(self._base * 1_000_003 + utils.pytorch_worker_seed())
            self._seeded = True

    def random(self):
        self._ensure()
        return super().random()

    def randint(self, a, b):
        self._ensure()
        return super().randint(a, b)

    def __reduce__(self):  # spawned workers rebuild it unseeded (random.Random's own reduce needs no-arg init)
        return (_WorkerRandom, (self._base,))


def make_train_loader(
    urls_or_dir: Any,
    batch_size: int,
    num_workers: int = 2,
    shuffle_buffer: int = 256,
    epoch_samples: int = 1024,
    seed: int = 0,
    decode: Any = "rgba8",
    drop_last: bool = False,
    skip_log: str | Path | None = None,
    validate: bool = True,
):
    """A ``wds.WebLoader`` of training batches (see the section comment above for the semantics).

    Each worker yields ``epoch_samples`` samples per epoch (``with_epoch``), batched within the
    worker to ``batch_size`` (:func:`collate_samples`: arrays -> torch tensors, the rest lists).
    The loader's ``skip_recorder`` is the handler of the main process (``num_workers=0``); with
    workers use ``skip_log`` and :func:`read_skip_log`.
    """
    import webdataset as wds

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    recorder = SkipRecorder(skip_log)
    ds = make_train_dataset(urls_or_dir, epoch_samples, shuffle_buffer, seed, decode, recorder, validate)
    loader = wds.WebLoader(
        ds,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples,
        drop_last=drop_last,
        persistent_workers=False,
    )
    loader.skip_recorder = recorder
    return loader
