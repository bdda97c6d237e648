"""Teacher trajectory cache: round trip, OI reproduces from (N, C, II), rejects, versions, cache hits."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from dd3g_core import trajectories as tr
from dd3g_core.profiles import get_profile
from dd3g_core.shards import iter_samples, write_shards
from dd3g_core.teacher import TinyTeacher

SMOKE = get_profile("smoke").trajectories  # K=2 draws, 3 steps, guidance 2 (CFG), record x_1, batches of 4
FAST = dataclasses.replace(SMOKE, steps=1, record_steps=(0,), guidance=1.0)


@pytest.fixture(scope="module")
def teacher():
    return TinyTeacher(seed=0).eval()  # random weights: the cache contract does not need a trained teacher


def rgba_image(i, size=32):
    a = np.zeros((size, size, 4), np.uint8)
    a[6 + i : 22 + i, 8:24] = [(50 * i) % 256, 120, 200 - 20 * i, 255]
    a[10:14, 10:14, 3] = 128
    return a


def make_rgba_shard(root, version="vA", n=3, bad=True, index=0):
    samples = [{"__key__": f"obj{i:04d}", "rgba.png": rgba_image(i), "json": {"i": i}} for i in range(n)]
    if bad:
        samples += [
            {"__key__": "transparent", "rgba.png": np.zeros((32, 32, 4), np.uint8), "json": {}},
            {"__key__": "corrupt", "rgba.png": b"\x89PNG\r\n\x1a\nthis is not a png", "json": {}},
            {"__key__": "oblong", "rgba.png": np.full((32, 20, 4), 255, np.uint8), "json": {}},
        ]
    d = root / "rgba_images" / version / f"shard-{index:05d}"
    write_shards(samples, d, samples_per_shard=2)
    return d


def test_config_validation():
    with pytest.raises(ValueError, match="record_steps"):
        tr.TrajectoryCacheConfig(steps=4, record_steps=(4,))
    with pytest.raises(ValueError, match="increasing"):
        tr.TrajectoryCacheConfig(record_steps=(3, 1))
    with pytest.raises(ValueError, match="store_dtype"):
        tr.TrajectoryCacheConfig(store_dtype="int8")
    assert tr.noise_seed("a", 0) == tr.noise_seed("a", 0) != tr.noise_seed("a", 1) != tr.noise_seed("b", 0)


def test_round_trip_reproduces_views_and_records_rejects(tmp_path, teacher):
    rgba_dir = make_rgba_shard(tmp_path)
    summary, hit = tr.cache_shard(tmp_path, rgba_dir, teacher, SMOKE, 0)
    assert not hit
    assert summary.directory == tr.shard_dir(tmp_path, SMOKE, teacher.config_hash(), "vA", 0)
    assert summary.directory.parent.parent.name == "teacher_trajectories"
    m = summary.manifest
    assert summary.num_samples == 3 * SMOKE.num_noise_draws
    reasons = {r["key"]: r["reason"] for r in m["rejects"]}
    assert set(reasons) == {"transparent", "corrupt", "oblong"}
    assert "transparent" in reasons["transparent"] and "undecodable" in reasons["corrupt"]
    assert "square" in reasons["oblong"]
    assert m["upstream"]["version"] == "vA" and m["teacher"]["config_hash"] == teacher.config_hash()

    samples = list(iter_samples(summary.directory))
    assert [s["__key__"] for s in samples] == [f"obj{i:04d}_d{d:02d}" for i in range(3) for d in range(2)]
    f, c, h, w = teacher.latent_shape()
    v = f - 1
    s0 = samples[0]
    assert s0["input.png"].shape == (32, 32, 4) and np.array_equal(s0["input.png"], rgba_image(0))
    assert s0["noise.npy"].shape == (f, c, h, w) and s0["noise.npy"].dtype == np.float32
    assert (
        s0["cameras.npy"].shape == (f, 16) and s0["viewmats.npy"].shape == (v, 4, 4) and s0["ks.npy"].shape == (v, 3, 3)
    )
    assert s0["views.npy"].shape == (v, 3, 32, 32) and s0["views.npy"].dtype == np.float32
    assert s0["xt.npy"].shape == (1, f, c, h, w)
    rec = s0["json"]
    assert rec["eta"] == 0.0 and rec["steps"] == 3 and rec["guidance"] == 2.0 and rec["xt_steps"] == [1]
    assert rec["teacher_config_hash"] == teacher.config_hash() and rec["scheduler"]["prediction_type"]
    assert rec["noise_seed"] == tr.noise_seed("obj0000", 0, SMOKE.seed) and rec["rgba_key"] == "obj0000"
    # N is re-drawable from the recorded seed; x_0 of the trajectory is N itself
    assert torch.equal(teacher.draw_noise(1, rec["noise_seed"])[0], torch.from_numpy(s0["noise.npy"]))
    for s in samples:
        assert all(np.isfinite(s[k]).all() for k in ("noise.npy", "views.npy", "xt.npy"))

    # rerun the teacher on (N, C, II): same batch composition (and threads) -> bit-identical OI
    first_batch = [s for s in samples if s["json"]["batch"]["index"] == 0]
    assert len(first_batch) == SMOKE.batch_size
    oi = tr.reproduce_views(teacher, first_batch)
    assert torch.equal(oi, torch.from_numpy(np.stack([s["views.npy"] for s in first_batch])))
    # another batch size orders float32 reductions differently: ~1e-6, within 1e-5
    one = samples[-1]
    oi1 = tr.reproduce_views(teacher, [one])
    assert (oi1[0] - torch.from_numpy(one["views.npy"])).abs().max().item() < 1e-5

    # unchanged inputs: cache hit, same content
    again, hit = tr.cache_shard(tmp_path, rgba_dir, teacher, SMOKE, 0)
    assert hit and again.manifest["files"] == m["files"]


def test_non_finite_teacher_output_is_rejected_not_written(tmp_path, teacher, monkeypatch):
    rgba_dir = make_rgba_shard(tmp_path, bad=False, n=2)
    real = teacher.sample

    def poisoned(images, noise, **kw):
        out = real(images, noise, **kw)
        out.images[1] = float("nan")  # the second pair of every batch
        return out

    monkeypatch.setattr(teacher, "sample", poisoned)
    summary, _ = tr.cache_shard(tmp_path, rgba_dir, teacher, FAST, 0)
    rejects = summary.manifest["rejects"]
    assert [r["key"] for r in rejects] == ["obj0000_d01"]
    assert "non-finite" in rejects[0]["reason"] and rejects[0]["stage"] == "teacher"
    keys = [s["__key__"] for s in iter_samples(summary.directory)]
    assert keys == ["obj0000_d00", "obj0001_d00", "obj0001_d01"]


def test_a_failing_batch_is_retried_per_sample(tmp_path, teacher, monkeypatch):
    rgba_dir = make_rgba_shard(tmp_path, bad=False, n=2)
    real = teacher.sample
    bad_noise = teacher.draw_noise(1, tr.noise_seed("obj0001", 0, FAST.seed))

    def picky(images, noise, **kw):
        if any(torch.equal(n, bad_noise[0]) for n in noise):
            raise RuntimeError("boom")
        return real(images, noise, **kw)

    monkeypatch.setattr(teacher, "sample", picky)
    summary, _ = tr.cache_shard(tmp_path, rgba_dir, teacher, FAST, 0)
    assert [r["key"] for r in summary.manifest["rejects"]] == ["obj0001_d00"]
    assert summary.num_samples == 3


def test_version_follows_config_teacher_and_upstream(tmp_path, teacher):
    h = teacher.config_hash()
    base = tr.stage_version(FAST, h, "vA")
    assert tr.stage_version(FAST, h, "vA") == base
    assert tr.stage_version(dataclasses.replace(FAST, num_noise_draws=3), h, "vA") != base
    assert tr.stage_version(dataclasses.replace(FAST, guidance=3.0), h, "vA") != base
    assert tr.stage_version(FAST, h, "vB") != base
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        next(other.unet.parameters()).add_(1e-3)
    assert other.config_hash() != h
    assert tr.stage_version(FAST, other.config_hash(), "vA") != base

    rgba_dir = make_rgba_shard(tmp_path, bad=False, n=1)
    a, _ = tr.cache_shard(tmp_path, rgba_dir, teacher, FAST, 0)
    b, hit = tr.cache_shard(tmp_path, rgba_dir, other, FAST, 0)
    assert not hit and a.directory != b.directory and a.directory.is_dir()
    # the upstream shard changed under the same version: not a cache hit, rebuilt in place
    make_rgba_shard(tmp_path, bad=False, n=2)
    c, hit = tr.cache_shard(tmp_path, rgba_dir, teacher, FAST, 0)
    assert not hit and c.directory == a.directory and c.num_samples == 2 * FAST.num_noise_draws
