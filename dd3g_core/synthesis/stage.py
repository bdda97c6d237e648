"""The ``rgba_images`` stage: seeds -> generator -> matting -> filters -> recentre -> shards.

(The ``folder`` generator, the user's own images, takes the same filters, recentring, shard writer and
cache rules with its own listing, shard assignment and cache key: :mod:`.folder`. The generator, matting
and prompts a config names are built lazily by :class:`~.backends.SynthesisBackends`: :mod:`.backends`.)

One **partition** = one shard index ``k``: ``synthesize_shard`` writes
``<data_root>/rgba_images/<version>/shard-{k:05d}/`` (a :func:`~dd3g_core.shards.write_shards`
set: ``shard-000000.tar`` + ``manifest.json``, built under a temp dir and renamed when complete,
so a killed run leaves nothing a reader accepts and other partitions are never touched).
A partition whose directory validates is a cache hit and is not recomputed.

Sample ``i`` of shard ``k`` has seed ``s = seed_start + k * samples_per_shard + i``. Each
accepted sample is ``rgba.png`` (uint8 [R, R, 4], straight alpha, centred with the margin) and a
``json`` record (see docs/synthesis.md). Rejected samples (a failed filter, or an exception
while generating / matting / post-processing one sample) are *not* written as images but are
listed in the manifest: ``extra = {"accepted": n, "attempted": m, "rejected": [{key, seed,
stage, reasons, error?, ...}], ...}``. If every sample of a shard raised, the shard is not
written and the first error is raised (a systematic failure must not be cached as "all rejected").

The rules every shard stage follows (:mod:`dd3g_core.shards.rules`):

* keys: a key the shard writer would refuse (``sample_key_problem``: empty, with ``/`` or ``.``,
  or a duplicate) is checked where it enters the stage and becomes one recorded reject, never a
  failed partition;
* limits: with ``max_reject_share`` (the pipeline passes the profile's ``limits``), a partition that
  rejects more than that share of its samples, or accepts none, raises ``RejectShareError``
  (partition, counts, the most common reasons) and is not published; a published partition over the
  limit (made without one) is not a cache hit;
* cache hits: a partition is reused only if every shard matches its manifest (sizes, sha256); a
  damaged or malformed one is rebuilt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..progress import Progress
from ..shards import ShardSetSummary, ShardValidationError, iter_samples, read_manifest, validate_shards, write_shards
from ..shards.rules import RejectShareError, check_reject_share, sample_key_problem
from .backends import ExactMatting, SynthesisBackends, alpha_iou
from .config import CODE_VERSION, STAGE, RGBASynthesisConfig, shard_dir, stage_dir, stage_version
from .generators import GeneratedImage
from .matting import MattingResult
from .postprocess import filter_and_recentre
from .prompts import prompt_for_seed

log = logging.getLogger(__name__)
_logger = log  # for functions whose `log` parameter names where progress lines go


def _matte(backends: SynthesisBackends, image: GeneratedImage) -> MattingResult:
    m = backends.matting
    return m.matte_generated(image) if isinstance(m, ExactMatting) else m.matte(image.rgb)


def _sample_key(config: RGBASynthesisConfig, seed: int) -> str:
    return f"{config.split}{seed:08d}"


def _key_reject(config: RGBASynthesisConfig, seed: int, problem: str) -> dict:
    return {
        "key": _sample_key(config, seed),
        "seed": seed,
        "stage": "key",
        "reasons": [{"filter": "bad_key"}],
        "error": f"{problem} (an rgba key is the config's split {config.split!r} + the seed)",
    }


def process_image(
    config: RGBASynthesisConfig, backends: SynthesisBackends, seed: int, image: GeneratedImage, base: dict
) -> tuple[dict | None, dict | None]:
    """(sample, None) for an accepted image or (None, reject record)."""
    key = base["key"]
    record = dict(base)
    record.update(image.record)
    matted = _matte(backends, image)
    record["matting_info"] = matted.info
    if image.true_rgba is not None:  # procedural: how good was the matte (evaluation only)
        record["matting_iou"] = alpha_iou(matted.rgba[..., 3], image.true_rgba[..., 3])
    sample, reasons, stats = filter_and_recentre(config, matted, record)
    if sample is None:
        return None, {
            "key": key,
            "seed": seed,
            "stage": "filter",
            "reasons": reasons,
            "stats": stats,
            **{k: record[k] for k in ("prompt", "matting_iou") if k in record},
        }
    return sample, None


def _generate(backends: SynthesisBackends, seeds: Sequence[int], prompts: Sequence[str | None]) -> list:
    """Images for ``seeds``; an exception becomes that sample's entry (a batch that fails is
    retried one by one so one bad sample does not take its batch-mates down)."""
    try:
        return list(backends.generator.generate(list(seeds), list(prompts)))
    except Exception as e:  # noqa: BLE001 - recorded per sample
        if len(seeds) == 1:
            return [e]
        return [_generate(backends, [s], [p])[0] for s, p in zip(seeds, prompts)]


def build_shard_samples(
    config: RGBASynthesisConfig,
    shard_index: int,
    backends: SynthesisBackends,
    version: str,
    progress: Progress | None = None,
) -> tuple[list[dict], list[dict]]:
    """All accepted samples and reject records of one shard (in memory; a shard is small).
    ``progress`` is told each generation batch's seeds as they are done."""
    seeds = config.shard_seeds(shard_index)
    prompts = backends.prompts
    batch = config.sdxl_batch_size if config.generator == "sdxl" else 1
    generator_desc = backends.generator.describe()
    matting_desc = backends.matting.describe()
    samples, rejected, errors, seen = [], [], 0, set()
    for start in range(0, len(seeds), batch):
        chunk = []
        for s in seeds[start : start + batch]:  # a key the shard writer would refuse: a reject, not generated
            problem = sample_key_problem(_sample_key(config, s), seen)
            if problem is None:
                chunk.append(s)
            else:
                errors += 1
                rejected.append(_key_reject(config, s, problem))
        if not chunk:
            if progress is not None:
                progress.update(len(seeds[start : start + batch]))
            continue
        chunk_prompts, prompt_idx = [], []
        for s in chunk:
            if prompts is None:
                chunk_prompts.append(None)
                prompt_idx.append(None)
            else:
                i, p = prompt_for_seed(prompts, s)
                chunk_prompts.append(p)
                prompt_idx.append(i)
        images = _generate(backends, chunk, chunk_prompts)
        for s, p, pi, image in zip(chunk, chunk_prompts, prompt_idx, images):
            key = _sample_key(config, s)
            base = {
                "key": key,
                "seed": s,
                "split": config.split,
                "shard_index": shard_index,
                "source": generator_desc["name"],
                "generator": generator_desc["name"],
                "generator_config": generator_desc,
                "matting": matting_desc["name"],
                "matting_config": matting_desc,
                "prompt": p,
                "prompt_index": pi,
                "code_version": CODE_VERSION,
                "stage_version": version,
            }
            if isinstance(image, Exception):
                errors += 1
                rejected.append(
                    {
                        "key": key,
                        "seed": s,
                        "stage": "generate",
                        "prompt": p,
                        "reasons": [{"filter": "exception"}],
                        "error": f"{type(image).__name__}: {image}",
                    }
                )
                continue
            try:
                sample, reject = process_image(config, backends, s, image, base)
            except Exception as e:  # noqa: BLE001 - one bad image is a recorded reject, the run continues
                errors += 1
                sample, reject = (
                    None,
                    {
                        "key": key,
                        "seed": s,
                        "stage": "process",
                        "prompt": p,
                        "reasons": [{"filter": "exception"}],
                        "error": f"{type(e).__name__}: {e}",
                    },
                )
            if sample is not None:
                samples.append(sample)
            else:
                rejected.append(reject)
                log.info("rejected %s: %s", key, reject.get("reasons"))
        if progress is not None:
            progress.update(len(seeds[start : start + batch]))
    if errors == len(seeds):
        raise RuntimeError(f"every sample of shard {shard_index} failed; first: {rejected[0]['error']}")
    return samples, rejected


def synthesize_shard(
    data_root: str | Path,
    config: RGBASynthesisConfig,
    shard_index: int,
    *,
    backends: SynthesisBackends | None = None,
    max_reject_share: float | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[ShardSetSummary, bool]:
    """Build (or reuse) partition ``shard_index``. Returns ``(summary, cache_hit)``.

    ``max_reject_share``: the partition fails (:class:`RejectShareError`, nothing published) if more than
    this share of its samples is rejected or none is accepted; a published partition over it is rebuilt
    rather than reused. ``None``: no limit (every outcome but "every sample raised" is published).
    ``log``: where progress lines go while the shard is built (:class:`~dd3g_core.progress.Progress`: samples
    done / total, rate, ETA every ``$DD3G_PROGRESS_SECONDS``, 30 s by default); ``None``: this module's
    ``logging`` logger at INFO."""
    config = config.resolved()
    if config.generator == "folder":
        from .folder import synthesize_folder_shard

        return synthesize_folder_shard(
            data_root, config, shard_index, backends=backends, max_reject_share=max_reject_share, log=log
        )
    version = stage_version(config)
    out = shard_dir(data_root, config, shard_index)
    summary = reusable_partition(out, shard_index, max_reject_share)
    if summary is not None:
        return summary, True
    backends = backends or SynthesisBackends(config)
    seeds = config.shard_seeds(shard_index)
    _ = backends.prompts, backends.generator, backends.matting  # loaded (SDXL: a minute) before the clock starts
    progress = Progress(f"{STAGE} shard {int(shard_index):05d}", len(seeds), log or _logger.info)
    samples, rejected = build_shard_samples(config, shard_index, backends, version, progress)
    progress.close(f"{len(samples)} accepted, {len(rejected)} rejected")
    if max_reject_share is not None:  # before anything is written: a failed partition is never published
        check_reject_share(STAGE, shard_index, len(samples), len(seeds), rejected, max_reject_share)
    ious = [s["json"]["matting_iou"] for s in samples if "matting_iou" in s["json"]]
    ious += [r["matting_iou"] for r in rejected if "matting_iou" in r]
    extra = {
        "stage": STAGE,
        "stage_version": version,
        "shard_index": shard_index,
        "seeds": [seeds[0], seeds[-1] + 1],
        "attempted": len(seeds),
        "accepted": len(samples),
        "rejected": rejected,
        "num_rejected": len(rejected),
        "generator": backends.generator.describe(),
        "matting_backend": backends.matting.describe(),
    }
    if ious:
        extra["matting_iou_mean"] = float(np.mean(ious))
        extra["matting_iou_min"] = float(np.min(ious))
    coverage = [s["json"]["alpha_coverage"] for s in samples]
    if coverage:
        extra["alpha_coverage_mean"] = float(np.mean(coverage))
    summary = write_shards(
        samples,
        out,
        samples_per_shard=config.samples_per_shard,
        config={"stage": STAGE, "code_version": CODE_VERSION, **config.to_record()},
        extra=extra,
    )
    return summary, False


def reusable_partition(
    out: Path, shard_index: int, max_reject_share: float | None, matches: Callable[[dict], bool] | None = None
) -> ShardSetSummary | None:
    """The published partition ``out`` if it is a cache hit: it validates against its manifest, is within
    ``max_reject_share`` and (``matches``) was built from the inputs the caller has now; else ``None``
    (the caller rebuilds it, atomically replacing what is there)."""
    if not out.exists():
        return None
    try:
        summary = validate_shards(out)
        if matches is not None and not matches(summary.manifest):
            _logger.info("rebuilding partition %s: its inputs changed", out)
            return None
        if max_reject_share is not None:
            rejected = summary.manifest.get("rejected")
            rejected = rejected if isinstance(rejected, list) else []
            n = summary.num_samples
            check_reject_share(STAGE, shard_index, n, n + len(rejected), rejected, max_reject_share)
        return summary
    except ShardValidationError as e:
        _logger.warning("rebuilding damaged partition %s: %s", out, e)  # replaced atomically by the caller
    except RejectShareError as e:
        _logger.warning("not reusing partition %s, it is over its reject limit: %s", out, e)
    return None


def synthesize_rgba(
    data_root: str | Path,
    config: RGBASynthesisConfig,
    shards: Sequence[int] | None = None,
    max_reject_share: float | None = None,
    log: Callable[[str], None] | None = None,
) -> list[ShardSetSummary]:
    """Every partition (or ``shards``) of the stage; backends are loaded once and only if needed."""
    config = config.resolved()
    backends = SynthesisBackends(config)
    indices = range(config.num_shards) if shards is None else shards
    return [
        synthesize_shard(data_root, config, k, backends=backends, max_reject_share=max_reject_share, log=log)[0]
        for k in indices
    ]


def shard_summaries(directory: str | Path) -> list[ShardSetSummary]:
    """The finished partitions under a stage version directory (unvalidated manifests)."""
    directory = Path(directory)
    if (directory / "manifest.json").is_file():
        return [ShardSetSummary(directory, read_manifest(directory))]
    return [
        ShardSetSummary(d, read_manifest(d))
        for d in sorted(directory.glob("shard-*"))
        if d.is_dir() and (d / "manifest.json").is_file()
    ]


def preview_grid(summary_or_dir, count: int = 8) -> np.ndarray:  # uint8 [R, n*R, 4]
    """The first ``count`` images side by side, from a summary, a list of summaries, a partition
    directory or a stage version directory. An empty selection gives one transparent tile."""
    if isinstance(summary_or_dir, ShardSetSummary):
        summaries = [summary_or_dir]
    elif isinstance(summary_or_dir, (list, tuple)):
        summaries = list(summary_or_dir)
    else:
        summaries = shard_summaries(summary_or_dir)
    tiles: list[np.ndarray] = []
    for summary in summaries:
        if summary.num_samples == 0:
            continue
        for sample in iter_samples(summary.directory, validate=False):
            tiles.append(sample["rgba.png"])
            if len(tiles) == count:
                return np.concatenate(tiles, axis=1)
    if not tiles:
        res = 8
        for s in summaries:
            res = int(s.manifest.get("config", {}).get("resolution", res))
        return np.zeros((res, res, 4), np.uint8)
    return np.concatenate(tiles, axis=1)


__all__ = [
    "SynthesisBackends",
    "alpha_iou",
    "reusable_partition",
    "preview_grid",
    "shard_summaries",
    "stage_dir",
    "synthesize_rgba",
    "synthesize_shard",
]
