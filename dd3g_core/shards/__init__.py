"""Webdataset shard sets shared by every shard stage (``rgba_images``, ``teacher_trajectories``).

* :mod:`.writer` — atomic publication with a validating ``manifest.json``, validation, sequential
  reading (``write_shards``, ``validate_shards``, ``iter_samples``);
* :mod:`.reader` — the multi-process training reader (``make_train_loader``), pickle-free decoding
  and the skip log of samples that could not be decoded.
"""

from .reader import (
    PickleFieldError,
    SampleDecodeError,
    SkipRecorder,
    decode_image,
    decode_sample,
    make_train_loader,
    read_skip_log,
    resolve_shard_urls,
)
from .writer import (
    MANIFEST,
    ShardSetSummary,
    ShardValidationError,
    content_hash,
    encode_field,
    iter_samples,
    read_manifest,
    validate_shards,
    write_shards,
)

__all__ = [
    "MANIFEST",
    "ShardSetSummary",
    "ShardValidationError",
    "content_hash",
    "encode_field",
    "iter_samples",
    "read_manifest",
    "validate_shards",
    "write_shards",
    "PickleFieldError",
    "SampleDecodeError",
    "SkipRecorder",
    "decode_image",
    "decode_sample",
    "make_train_loader",
    "read_skip_log",
    "resolve_shard_urls",
]
