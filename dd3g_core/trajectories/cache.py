"""Stage 2, ``teacher_trajectories``: the teacher's deterministic DDIM answers, cached as shards.

For every RGBA image II of one ``rgba_images`` shard and each of K noise draws N, the teacher
samples its V views OI with deterministic DDIM (eta = 0) at its cameras C. OI is a function of
(N, C, II) only, so a cached sample can be re-run and checked (DESIGN §1, §3).

Output, one partition per upstream shard::

    <data_root>/teacher_trajectories/<version>/shard-{index:05d}/shard-000000.tar ... manifest.json

``version``: :func:`dd3g_core.trajectories.config.stage_version` (code version, resolved
:class:`TrajectoryCacheConfig`, ``teacher.config_hash()`` = config + weights, upstream ``rgba_images`` version).

Per sample (key ``<rgba key>_d<draw:02d>``): the fields of :mod:`dd3g_core.trajectories.sample`.

``store_dtype`` is float32 in the tiny/smoke presets (OI reproduces bit-exactly, see below) and
float16 in ``full`` (256² latents: a float32 cache of 120k x K samples is too large; float16
keeps OI to ~5e-4, far below what the student can fit).

The ``json`` record: teacher id + config hash, prediction type, scheduler config, steps,
guidance, eta = 0, the DDIM timesteps, ``xt_steps`` and their timesteps, the noise seed
(``noise_seed(rgba_key, draw, config.seed)``: sha256 of key and draw, so it does not depend on
shard layout or batch), the source rgba key / shard / upstream version, the batch the sample was
computed in (``batch.index/size/position``) and the torch thread count.

Reproducibility: re-running ``teacher.sample(II, N, cameras=C, steps, guidance)`` reproduces OI
bit for bit when the batch composition and the thread count are those recorded (CPU kernels are
deterministic for a fixed shape and thread count). With another batch size or thread count,
float32 reductions are ordered differently and OI differs by ~1e-6 (max abs): compare with a
tolerance of 1e-5 then (``tests/test_trajectories.py`` does both).

Batching: B = ``config.batch_size`` (image, draw) pairs go through one ``teacher.sample`` call.
Rejects (recorded in the manifest under ``rejects`` with key and reason, never written):
undecodable / non-square / tiny / fully transparent images, keys a shard set cannot hold (empty, with
``/`` or ``.``, duplicates: :func:`dd3g_core.shards.rules.sample_key_problem`), and non-finite teacher
outputs (NaN/Inf in OI or x_t). A batch whose ``sample`` call raises is re-run sample by sample so one bad
input only rejects itself. With ``max_reject_share`` (the pipeline passes the profile's limit), a
partition that rejects more than that share of its samples, or accepts none, raises
``RejectShareError`` and is not published, and a published one over the limit is not a cache hit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..progress import Progress
from ..shards import (
    SampleDecodeError,
    ShardSetSummary,
    ShardValidationError,
    SkipRecorder,
    decode_image,
    validate_shards,
    write_shards,
)
from ..shards.rules import RejectShareError, check_reject_share, sample_key_problem
from . import sample as S
from .config import (
    CODE_VERSION,
    STAGE,
    STORE_DTYPES,
    TrajectoryCacheConfig,
    content_hash,
    noise_seed,
    shard_dir,
    stage_version,
    upstream_version,
)

IMAGE_FIELD_CANDIDATES = ("rgba.png", "png", "input.png", "rgba.webp", "jpg")
MIN_IMAGE_SIZE = 8

__all__ = ["cache_shard", "load_sample", "reproduce_views"]

_log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- caching


@dataclass
class _Item:
    key: str  # output sample key
    rgba_key: str
    draw: int
    image: np.ndarray  # uint8 [H, W, 4]
    seed: int


def _iter_rgba(summary: ShardSetSummary, rejects: list[dict]) -> Iterator[tuple[str, np.ndarray]]:
    """Decoded, checked RGBA images of an upstream shard set; failures go to ``rejects``."""
    import webdataset as wds

    recorder = SkipRecorder()
    urls = [str(p) for p in summary.shard_paths]
    if not urls:
        return
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False, handler=recorder)
    seen: set[str] = set()
    for raw in ds:
        key = raw.get("__key__")
        try:
            problem = sample_key_problem(key, seen)  # it names this stage's output samples: checked first
            if problem is not None:
                raise SampleDecodeError(str(key), "__key__", problem)
            name = next((n for n in IMAGE_FIELD_CANDIDATES if n in raw), None)
            if name is None:
                raise SampleDecodeError(key, "", f"no image field (looked for {IMAGE_FIELD_CANDIDATES})")
            try:
                img = decode_image(raw[name], "rgba8")
            except Exception as e:  # noqa: BLE001
                raise SampleDecodeError(key, name, f"undecodable image: {type(e).__name__}: {e}") from e
            h, w = img.shape[:2]
            if h != w:
                raise SampleDecodeError(key, name, f"image is {h}x{w}, the teacher needs square inputs")
            if h < MIN_IMAGE_SIZE:
                raise SampleDecodeError(key, name, f"image is {h}x{w}, smaller than {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
            if int(img[..., 3].max()) == 0:
                raise SampleDecodeError(key, name, "image is fully transparent")
        except SampleDecodeError as e:
            rejects.append({"key": str(key), "stage": "input", "reason": str(e.reason)})
            continue
        yield key, img
    for rec in recorder.skipped:
        rejects.append({"key": rec["key"], "stage": "read", "reason": rec["reason"]})


def _batches(items: Iterator[_Item], batch_size: int) -> Iterator[list[_Item]]:
    """Consecutive items, at most ``batch_size`` per batch, one image size per batch."""
    batch: list[_Item] = []
    for it in items:
        if batch and (len(batch) >= batch_size or batch[0].image.shape != it.image.shape):
            yield batch
            batch = []
        batch.append(it)
    if batch:
        yield batch


def _to_np(t: torch.Tensor, dtype) -> np.ndarray:
    return t.detach().cpu().float().numpy().astype(dtype, copy=False)


def _counts(num_samples: int, rejects: list, draws: int) -> tuple[int, int]:
    """(accepted, attempted) samples of a partition: an input reject stands for all its noise draws."""
    lost = sum(draws if isinstance(r, dict) and r.get("stage") in ("input", "read") else 1 for r in rejects)
    return num_samples, num_samples + lost


def cache_shard(
    data_root: str | Path,
    rgba_shard_dir: str | Path,
    teacher,
    config: TrajectoryCacheConfig,
    shard_index: int,
    force: bool = False,
    max_reject_share: float | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[ShardSetSummary, bool]:
    """Cache the teacher's trajectories for one ``rgba_images`` shard (one Dagster partition).

    Returns ``(summary, cache_hit)``. A cache hit = the output dir exists, validates against its
    manifest, was built from the same upstream content (shard sha256s) and is within
    ``max_reject_share``; otherwise the shard set is (re)built atomically. ``teacher``: a
    ``MultiViewTeacher`` (eval mode is set by ``sample``). ``max_reject_share``: a partition that
    rejects more than this share of its samples, or accepts none, raises ``RejectShareError`` and is
    not published (``None``: no limit). ``log``: where progress lines go while the shard is computed
    (:class:`~dd3g_core.progress.Progress`: samples done / total, rate, ETA every ``$DD3G_PROGRESS_SECONDS``,
    30 s by default); ``None``: this module's ``logging`` logger at INFO.
    """
    rgba = validate_shards(rgba_shard_dir)
    up_version = upstream_version(rgba_shard_dir, rgba.manifest)
    up_hash = content_hash(rgba)
    t_hash = teacher.config_hash()
    version = stage_version(config, t_hash, up_version)
    out = shard_dir(data_root, config, t_hash, up_version, shard_index)
    if not force and (out / "manifest.json").is_file():
        try:
            summary = validate_shards(out)
            upstream = summary.manifest.get("upstream")
            if isinstance(upstream, dict) and upstream.get("content_hash") == up_hash:
                if max_reject_share is not None:
                    old = summary.manifest.get("rejects")
                    old = old if isinstance(old, list) else []
                    accepted, attempted = _counts(summary.num_samples, old, config.num_noise_draws)
                    check_reject_share(STAGE, shard_index, accepted, attempted, old, max_reject_share)
                return summary, True
        except ShardValidationError:
            pass  # rebuilt below (atomically replaces the bad directory)
        except RejectShareError:
            pass  # over the limit: rebuilt below, and published only if the rebuild is within it

    cfg = config.resolved(teacher)
    store = STORE_DTYPES[cfg.store_dtype]
    cams = teacher.cameras()
    emb = cams.embedding.detach().cpu().float().numpy()
    viewmats = cams.viewmats.detach().cpu().float().numpy()
    Ks = cams.Ks.detach().cpu().float().numpy()
    sched = {k: v for k, v in dict(teacher.scheduler.config).items() if not k.startswith("_")}
    rejects: list[dict] = []
    stats = {"batches": 0, "teacher_seconds": 0.0, "images": 0}
    extra: dict[str, Any] = {  # filled while write_shards consumes the generator (read after the loop)
        "stage": STAGE,
        "stage_version": version,
        "code_version": CODE_VERSION,
        "shard_index": int(shard_index),
        "teacher": {
            "teacher_id": teacher.teacher_id,
            "config_hash": t_hash,
            "prediction_type": teacher.prediction_type,
        },
        "scheduler": sched,
        "upstream": {
            "stage": "rgba_images",
            "version": up_version,
            "shard_dir": str(Path(rgba_shard_dir)),
            "content_hash": up_hash,
            "num_samples": rgba.num_samples,
        },
        "rejects": rejects,
        "stats": stats,
    }

    def items() -> Iterator[_Item]:
        for rgba_key, img in _iter_rgba(rgba, rejects):
            stats["images"] += 1
            for d in range(cfg.num_noise_draws):
                yield _Item(f"{rgba_key}_d{d:02d}", rgba_key, d, img, noise_seed(rgba_key, d, cfg.seed))

    def run(batch: list[_Item]):
        images = torch.from_numpy(np.stack([it.image for it in batch])).permute(0, 3, 1, 2).contiguous()
        noise = torch.cat([teacher.draw_noise(1, it.seed) for it in batch])
        t0 = time.perf_counter()
        out_ = teacher.sample(
            images, noise, cameras=cams, steps=cfg.steps, guidance=cfg.guidance, record_steps=cfg.record_steps
        )
        stats["teacher_seconds"] += time.perf_counter() - t0
        return noise, out_

    written, pairs = 0, 0

    def counted() -> int:  # (image, draw) pairs done: through the teacher, or lost with their input image
        return pairs + cfg.num_noise_draws * sum(r.get("stage") in ("input", "read") for r in rejects)

    def samples() -> Iterator[dict]:
        nonlocal written, pairs
        threads = torch.get_num_threads()
        for bi, batch in enumerate(_batches(items(), cfg.batch_size)):
            stats["batches"] += 1
            try:
                groups = [(batch, run(batch))]
            except Exception:  # noqa: BLE001 - isolate the bad input(s)
                groups = []
                for it in batch:
                    try:
                        groups.append(([it], run([it])))
                    except Exception as e:  # noqa: BLE001
                        rejects.append(
                            {
                                "key": it.key,
                                "rgba_key": it.rgba_key,
                                "draw": it.draw,
                                "stage": "teacher",
                                "reason": f"teacher.sample failed: {type(e).__name__}: {e}",
                            }
                        )
            for members, (noise, res) in groups:
                xt = torch.stack([res.trajectory[i] for i in cfg.record_steps], 1) if cfg.record_steps else None
                timesteps = [int(t) for t in res.timesteps.tolist()]
                for j, it in enumerate(members):
                    views = res.images[j]
                    finite = bool(
                        torch.isfinite(views).all()
                        and torch.isfinite(res.latents[j]).all()
                        and (xt is None or torch.isfinite(xt[j]).all())
                    )
                    if not finite:
                        rejects.append(
                            {
                                "key": it.key,
                                "rgba_key": it.rgba_key,
                                "draw": it.draw,
                                "stage": "teacher",
                                "reason": "non-finite teacher output (NaN/Inf in OI, final latents or x_t)",
                            }
                        )
                        continue
                    yield S.make_sample(
                        it.key,
                        it.image,
                        noise[j].cpu().numpy().astype(np.float32),
                        emb,
                        viewmats,
                        Ks,
                        _to_np(views, store),
                        _to_np(xt[j], store) if xt is not None else np.zeros((0, *noise.shape[1:]), store),
                        {
                            "teacher_id": teacher.teacher_id,
                            "teacher_config_hash": t_hash,
                            "prediction_type": teacher.prediction_type,
                            "scheduler": sched,
                            "steps": cfg.steps,
                            "guidance": cfg.guidance,
                            "eta": 0.0,
                            "timesteps": timesteps,
                            "xt_steps": list(cfg.record_steps),
                            "xt_timesteps": [timesteps[i] for i in cfg.record_steps],
                            "noise_seed": it.seed,
                            "draw": it.draw,
                            "base_seed": cfg.seed,
                            "seed_rule": "sha256(f'{base_seed}/{rgba_key}/{draw}')[:8] little-endian & (2^63-1)",
                            "rgba_key": it.rgba_key,
                            "rgba_shard": int(shard_index),
                            "upstream_version": up_version,
                            "stage_version": version,
                            "batch": {"index": bi, "size": len(members), "position": j},
                            "torch_threads": threads,
                            "store_dtype": cfg.store_dtype,
                            "views_shape": list(views.shape),
                        },
                    )
                    written += 1
            pairs += len(batch)
            progress.update(counted() - progress.done)
        if counted() > progress.done:  # unreadable inputs are only known at the end
            progress.update(counted() - progress.done)
        if max_reject_share is not None:  # raised inside write_shards: the partition is not published
            accepted, attempted = _counts(written, rejects, cfg.num_noise_draws)
            check_reject_share(STAGE, shard_index, accepted, attempted, rejects, max_reject_share)

    # total: every (image, draw) pair of the upstream shard; input rejects make the count end below it
    progress = Progress(
        f"{STAGE} shard {int(shard_index):05d}", rgba.num_samples * cfg.num_noise_draws, log or _log.info
    )
    t0 = time.perf_counter()
    summary = write_shards(
        samples(), out, samples_per_shard=cfg.samples_per_shard, config=cfg.to_dict(), extra=_Lazy(extra)
    )
    stats["wall_seconds"] = time.perf_counter() - t0
    progress.close(f"{summary.num_samples} written, {len(rejects)} rejected")
    return summary, False


class _Lazy(Mapping):
    """A mapping whose ``dict(...)`` copy is taken when ``write_shards`` builds the manifest, i.e. after
    the sample generator (which fills ``rejects``/``stats``) is exhausted."""

    def __init__(self, target: dict):
        self._target = target

    def __getitem__(self, k):
        return self._target[k]

    def __iter__(self):
        return iter(self._target)

    def __len__(self):
        return len(self._target)


# -------------------------------------------------------------------------------------- reading


def load_sample(shard_set_dir: str | Path, key: str) -> dict:
    """One decoded cached sample by key (validates the shard set; linear scan: for tests/inspection)."""
    from ..shards import iter_samples

    for s in iter_samples(shard_set_dir):
        if s["__key__"] == key:
            return s
    raise KeyError(f"no sample {key!r} in {shard_set_dir}")


def reproduce_views(teacher, samples: list[dict]) -> torch.Tensor:  # -> OI [B, V, 3, H, W] float32
    """Re-run the teacher on the cached (N, C, II) of ``samples`` (decoded records, one batch)."""
    rec = samples[0][S.RECORD]
    images = torch.from_numpy(np.stack([s[S.INPUT] for s in samples])).permute(0, 3, 1, 2).contiguous()
    noise = torch.from_numpy(np.stack([s[S.NOISE] for s in samples]))
    emb = torch.from_numpy(np.asarray(samples[0][S.CAMERAS]))
    out = teacher.sample(images, noise, cameras=emb, steps=rec["steps"], guidance=rec["guidance"])
    return out.images.float().cpu()
