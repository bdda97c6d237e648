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
is malformed, not corrupt). A sample that fails to decode (truncated PNG, bad ``.npy``, invalid
JSON), that the caller's ``validate_sample`` finds problems in (wrong shape, missing field), or a
tar member that cannot be read is skipped and recorded by :class:`SkipRecorder` (bounded, see
:mod:`.health`): logged as a warning, counted, its key and reason kept (in the process that saw it;
DataLoader workers are separate processes, so pass ``skip_log`` to collect them as JSON lines).
When no shard gives a single good sample any more, :class:`NoReadableShardsError` stops the reader
instead of resampling broken shards forever; paths that do not exist or are not tar files are
refused before anything starts (:func:`resolve_shard_urls`).
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .health import (
    MAX_RECORDS,
    InvalidSampleError,
    NoReadableShardsError,
    PickleFieldError,
    SampleDecodeError,
    ShardWatch,
    SkipRecorder,
    count_skips,
    read_skip_log,
)
from .writer import (
    MANIFEST,
    PICKLE_EXTENSIONS,
    ShardSetSummary,
    ShardValidationError,
    read_manifest,
    validate_shards,
)

__all__ = [
    "InvalidSampleError",
    "NoReadableShardsError",
    "PickleFieldError",
    "SampleDecodeError",
    "SkipRecorder",
    "count_skips",
    "read_skip_log",
    "decode_image",
    "decode_sample",
    "resolve_shard_urls",
    "shard_set_manifests",
    "collate_samples",
    "make_train_dataset",
    "make_train_loader",
]

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "ppm", "bmp", "tif", "tiff")
MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are refused before decoding (decompression bombs)
DECODE_MODES = ("rgba8", "rgb8", "pilrgba", "raw")
SampleValidator = Callable[[Mapping[str, Any]], Iterable[str]]  # decoded sample -> problems ([] if fine)


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
    their manifests (size + sha256) when ``validate``. Every local path must exist and be a regular
    tar file (a one-line :class:`ShardValidationError` otherwise); ``scheme://`` and ``pipe:`` urls
    pass unchecked."""
    urls: list[str] = []
    for d, tars in _shard_sources(urls_or_dir):
        if d is not None:
            summary = validate_shards(d) if validate else ShardSetSummary(d, read_manifest(d))
            tars = [str(s) for s in summary.shard_paths]
        urls.extend(tars)
    if not urls:
        raise ShardValidationError(f"no shards found in {urls_or_dir!r}")
    for url in urls:
        _check_tar(url)
    return urls


def shard_set_manifests(urls_or_dir: Any) -> list[dict]:
    """The (checked) manifests of the shard sets ``urls_or_dir`` names; tar paths have none."""
    return [read_manifest(d) for d, _ in _shard_sources(urls_or_dir) if d is not None]


def _shard_sources(urls_or_dir: Any) -> list[tuple[Path | None, list[str]]]:
    """``(shard set directory, [])`` or ``(None, tar urls)`` per item of ``urls_or_dir``."""
    items = [urls_or_dir] if isinstance(urls_or_dir, (str, os.PathLike)) else list(urls_or_dir)
    out: list[tuple[Path | None, list[str]]] = []
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
            out.extend((d, []) for d in sets)
        else:
            import braceexpand

            out.append((None, list(braceexpand.braceexpand(str(item)))))
    return out


def _check_tar(url: str) -> None:
    if "://" in url or url.startswith("pipe:"):
        return
    p = Path(url)
    if not p.exists():
        raise ShardValidationError(f"{p}: no such file or directory (give a shard set directory or .tar paths)")
    if not p.is_file():
        raise ShardValidationError(f"{p}: not a regular file (give a shard set directory or .tar paths)")
    try:
        ok = tarfile.is_tarfile(p)
    except OSError as e:
        raise ShardValidationError(f"{p}: cannot be read ({e})") from None
    if not ok:
        raise ShardValidationError(f"{p}: not a tar file (shards are webdataset .tar files)")


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
    validate_sample: SampleValidator | None = None,
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
    # the watch sees each url this worker opens (it goes right before the opener) and each good sample
    source = urls_or_dir if isinstance(urls_or_dir, (str, os.PathLike)) else ", ".join(map(str, urls_or_dir))
    watch = ShardWatch(str(source), len(urls), handler)
    opener = next(i for i, stage in enumerate(ds.pipeline) if isinstance(stage, wds.cache.StreamingOpen))
    ds.pipeline.insert(opener, watch.shards)
    ds = ds.map(functools.partial(_decode_checked, decode=decode, validate_sample=validate_sample), handler=handler)
    ds.append(watch.samples)
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 64), rng=_WorkerRandom(seed))
    ds.skip_recorder = handler
    return ds.with_epoch(epoch_samples)


def _decode_checked(sample: Mapping[str, Any], decode: Any, validate_sample: SampleValidator | None) -> dict:
    out = decode_sample(sample, decode)
    if validate_sample is not None:
        try:
            problems = list(validate_sample(out))
        except Exception as e:  # noqa: BLE001 - a validator choking on odd data is a problem of the sample
            problems = [f"validator raised {type(e).__name__}: {e}"]
        if problems:
            raise InvalidSampleError(str(out.get("__key__")), None, "; ".join(problems))
    return out


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
    validate_sample: SampleValidator | None = None,
    max_skip_records: int = MAX_RECORDS,
):
    """A ``wds.WebLoader`` of training batches (see the section comment above for the semantics).

    Each worker yields ``epoch_samples`` samples per epoch (``with_epoch``), batched within the
    worker to ``batch_size`` (:func:`collate_samples`: arrays -> torch tensors, the rest lists).
    ``validate_sample(sample) -> problems`` (e.g. ``SampleSpec.problems``) runs on every decoded
    sample; one with problems is skipped and recorded. The loader's ``skip_recorder`` is the handler
    of the main process (``num_workers=0``); with workers use ``skip_log`` and :func:`read_skip_log`.
    Each process logs at most ``max_skip_records`` distinct skips, then only counts them (:mod:`.health`).
    """
    import webdataset as wds

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    recorder = SkipRecorder(skip_log, max_records=max_skip_records)
    ds = make_train_dataset(
        urls_or_dir, epoch_samples, shuffle_buffer, seed, decode, recorder, validate, validate_sample
    )
    loader = wds.WebLoader(
        ds,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples,
        drop_last=drop_last,
        persistent_workers=False,
    )
    loader.append(_one_line_errors)
    loader.skip_recorder = recorder
    return loader


def _one_line_errors(batches: Iterable[dict]) -> Iterator[dict]:
    """A worker's :class:`NoReadableShardsError` reaches the caller as its one line, not a worker traceback."""
    try:
        yield from batches
    except NoReadableShardsError as e:
        raise NoReadableShardsError.unwrap(e) from None
