import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dd3g_core.shards import ShardValidationError, iter_samples, validate_shards, write_shards


def make_samples(n, start=0):
    rng = np.random.default_rng(0)
    for i in range(start, start + n):
        yield {
            "__key__": f"s{i:05d}",
            "rgba.png": rng.integers(0, 256, (6, 5, 4), dtype=np.uint8),
            "json": {"i": i},
            "noise.npy": np.full((2, 3), i, dtype=np.float32),
        }


def test_round_trip_and_manifest(tmp_path):
    out = tmp_path / "stage" / "v1"
    summary = write_shards(make_samples(7), out, samples_per_shard=3, config={"a": 1})
    assert summary.num_samples == 7 and summary.manifest["num_shards"] == 3
    assert [f["samples"] for f in summary.manifest["files"]] == [3, 3, 1]
    assert json.loads((out / "manifest.json").read_text())["config"] == {"a": 1}
    got = list(iter_samples(out))
    assert [s["__key__"] for s in got] == [f"s{i:05d}" for i in range(7)]
    expected = list(make_samples(7))
    for s, e in zip(got, expected):
        assert s["rgba.png"].shape == (6, 5, 4) and np.array_equal(s["rgba.png"], e["rgba.png"])
        assert s["json"] == e["json"] and np.array_equal(s["noise.npy"], e["noise.npy"])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def test_truncated_or_corrupt_shard_fails_validation_with_its_name(tmp_path):
    out = tmp_path / "v"
    write_shards(make_samples(4), out, samples_per_shard=2)
    shard = out / "shard-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardValidationError, match="shard-000001.tar.*truncated"):
        validate_shards(out)
    shard.write_bytes(data[:-1] + b"x")
    with pytest.raises(ShardValidationError, match="shard-000001.tar.*sha256"):
        validate_shards(out)
    (out / "manifest.json").unlink()
    with pytest.raises(ShardValidationError, match="no manifest"):
        validate_shards(out)


def test_failed_writer_leaves_nothing_and_keeps_previous_output(tmp_path):
    out = tmp_path / "v"
    write_shards(make_samples(3), out, samples_per_shard=2)

    def exploding():
        yield from make_samples(2)
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError):
        write_shards(exploding(), out, samples_per_shard=1)
    assert validate_shards(out).num_samples == 3  # the earlier complete output survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_killed_writer_leaves_no_readable_output_and_rerun_succeeds(tmp_path):
    out = tmp_path / "v"
    script = f"""
import time, numpy as np
from dd3g_core.shards import write_shards
def slow():
    for i in range(1000):
        yield {{"__key__": f"k{{i}}", "json": {{"i": i}}}}
        time.sleep(0.01)
write_shards(slow(), {str(out)!r}, samples_per_shard=5)
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".tmp-v.*/shard-000001.tar")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert list(tmp_path.glob(".tmp-v.*"))  # the partial work is only in a temp dir
    write_shards(make_samples(2), out)
    assert validate_shards(out).num_samples == 2
    assert not list(tmp_path.glob(".tmp-v.*"))  # stale temp of the dead writer was cleared


def test_pickle_fields_refused_on_write_and_read(tmp_path):
    with pytest.raises(ValueError, match="pickle"):
        write_shards([{"__key__": "a", "x.pth": b"123"}], tmp_path / "w")
    out = tmp_path / "r"
    write_shards([{"__key__": "a", "json": {"ok": 1}}], out)
    # smuggle a pickle member into the shard and re-sign the manifest with validation off
    shard = out / "shard-000000.tar"
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("b.pyd")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ValueError, match="pickle"):
        list(iter_samples(out, validate=False))


def test_bad_keys_rejected(tmp_path):
    with pytest.raises(ValueError, match="sample key 'a.b' contains '.'"):
        write_shards([{"__key__": "a.b", "json": {}}], tmp_path / "k")
    with pytest.raises(ValueError, match="duplicate"):
        write_shards([{"__key__": "a", "json": {}}, {"__key__": "a", "json": {}}], tmp_path / "k")
    assert not (tmp_path / "k").exists()


# ------------------------------------------------------------------------- training reader

from dd3g_core.shards.reader import (  # noqa: E402
    PickleFieldError,
    decode_image,
    make_train_dataset,
    make_train_loader,
    read_skip_log,
)


def _png_bytes(arr):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_train_loader_is_resampled_and_counts_with_epoch(tmp_path):
    out = tmp_path / "v"
    write_shards(make_samples(12), out, samples_per_shard=4)
    loader = make_train_loader(out, batch_size=3, num_workers=0, shuffle_buffer=8, epoch_samples=10, seed=3)
    batches = list(loader)
    assert [len(b["__key__"]) for b in batches] == [3, 3, 3, 1]  # 10 = with_epoch count, batched in the worker
    b = batches[0]
    assert b["rgba.png"].shape == (3, 6, 5, 4) and b["rgba.png"].dtype == torch.uint8
    assert b["noise.npy"].shape == (3, 2, 3) and isinstance(b["json"][0], dict)
    keys = [k for b in batches for k in b["__key__"]]
    assert set(keys) <= {f"s{i:05d}" for i in range(12)}
    again = [k for b in make_train_loader(out, 3, 0, 8, 10, seed=3) for k in b["__key__"]]
    assert again == keys  # a seed fixes shard draws and shuffling
    # endless: a second epoch of the same loader yields again (resampled shards never run dry)
    assert sum(len(b["__key__"]) for b in loader) == 10


def test_train_loader_splits_across_two_workers(tmp_path):
    out = tmp_path / "v"
    write_shards(make_samples(16), out, samples_per_shard=4)
    loader = make_train_loader(out, batch_size=5, num_workers=2, shuffle_buffer=4, epoch_samples=5, seed=0)
    batches = [b["__key__"] for b in loader]
    assert [len(b) for b in batches] == [5, 5]  # epoch_samples counts per worker: 2 workers x 5
    assert batches[0] != batches[1]  # each worker draws its own shard stream


def test_train_loader_skips_and_records_a_corrupt_sample(tmp_path):
    samples = list(make_samples(3))
    samples.insert(1, {"__key__": "broken", "rgba.png": b"\x89PNG\r\n\x1a\ntruncated", "json": {"i": -1}})
    out = tmp_path / "v"
    write_shards(samples, out, samples_per_shard=10)  # the shard itself is intact: it validates
    validate_shards(out)
    loader = make_train_loader(out, batch_size=2, num_workers=0, shuffle_buffer=0, epoch_samples=6, seed=0)
    keys = [k for b in loader for k in b["__key__"]]
    assert len(keys) == 6 and "broken" not in keys
    skipped = loader.skip_recorder.skipped
    assert skipped and {s["key"] for s in skipped} == {"broken"} and skipped[0]["field"] == "rgba.png"
    # with worker processes the records come back through the shared skip log
    log = tmp_path / "skips.jsonl"
    loader = make_train_loader(
        out, batch_size=2, num_workers=2, shuffle_buffer=0, epoch_samples=3, seed=0, skip_log=log
    )
    keys = [k for b in loader for k in b["__key__"]]
    assert len(keys) == 6 and "broken" not in keys
    assert {r["key"] for r in read_skip_log(log)} == {"broken"}


def test_train_loader_refuses_pickle_fields(tmp_path):
    tar_path = tmp_path / "evil-000000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in (("s0.json", b"{}"), ("s0.pyd", b"\x80\x04K\x01.")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = make_train_dataset(str(tar_path), epoch_samples=2, shuffle_buffer=0)
    with pytest.raises(PickleFieldError, match="pickle"):
        next(iter(ds))
    with pytest.raises(PickleFieldError):
        list(make_train_loader(str(tar_path), batch_size=1, num_workers=0, epoch_samples=1))


def test_decode_image_modes_and_bomb_guard():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 200
    assert decode_image(_png_bytes(rgba)).shape == (4, 4, 4)
    gray16 = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000
    g = decode_image(_png_bytes(gray16))
    assert g.shape == (4, 4, 4) and g[..., 0].max() > 200 and (g[..., 3] == 255).all()
    assert decode_image(_png_bytes(rgba), "rgb8").shape == (4, 4, 3)
    with pytest.raises(ValueError, match="pixel limit"):
        decode_image(_png_bytes(np.zeros((64, 64, 3), np.uint8)), max_pixels=1000)


def test_resolve_shard_urls_accepts_a_directory_of_partitions(tmp_path):
    from dd3g_core.shards.reader import resolve_shard_urls

    for k in range(2):
        write_shards(make_samples(3, start=3 * k), tmp_path / "v" / f"shard-{k:05d}", samples_per_shard=2)
    urls = resolve_shard_urls(tmp_path / "v")
    assert [Path(u).parent.name for u in urls] == ["shard-00000"] * 2 + ["shard-00001"] * 2
    assert resolve_shard_urls([tmp_path / "v" / "shard-00001"]) == urls[2:]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardValidationError, match="neither a shard set"):
        resolve_shard_urls(tmp_path / "empty")
