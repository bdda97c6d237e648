"""Webdataset shard sets shared by every shard stage (``rgba_images``, ``teacher_trajectories``).

* :mod:`.writer` — atomic publication with a validating ``manifest.json``, validation, sequential
  reading (``write_shards``, ``validate_shards``, ``iter_samples``);
* :mod:`.reader` — the multi-process training reader (``make_train_loader``), pickle-free decoding,
  optional per-sample validation;
* :mod:`.health` — the bounded skip log of samples that could not be read, and the watch that stops a
  reader no shard gives a sample to (``NoReadableShardsError``);
* :mod:`.rules` — the one sample-key rule and the reject limit a partition must meet to be published.
"""

from .health import (
    InvalidSampleError,
    NoReadableShardsError,
    PickleFieldError,
    SampleDecodeError,
    SkipRecorder,
    count_skips,
    read_skip_log,
)
from .reader import (
    decode_image,
    decode_sample,
    make_train_loader,
    resolve_shard_urls,
    shard_set_manifests,
)
from .rules import RejectShareError, check_reject_share, sample_key_problem
from .writer import (
    MANIFEST,
    ShardSetSummary,
    ShardValidationError,
    check_manifest,
    content_hash,
    encode_field,
    iter_samples,
    manifest_file,
    read_manifest,
    validate_shards,
    write_shards,
)

__all__ = [
    "MANIFEST",
    "ShardSetSummary",
    "ShardValidationError",
    "check_manifest",
    "content_hash",
    "encode_field",
    "iter_samples",
    "manifest_file",
    "read_manifest",
    "validate_shards",
    "write_shards",
    "InvalidSampleError",
    "NoReadableShardsError",
    "PickleFieldError",
    "SampleDecodeError",
    "SkipRecorder",
    "count_skips",
    "decode_image",
    "decode_sample",
    "make_train_loader",
    "read_skip_log",
    "resolve_shard_urls",
    "shard_set_manifests",
    "RejectShareError",
    "check_reject_share",
    "sample_key_problem",
]
