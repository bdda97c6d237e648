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
    with pytest.raises(ValueError, match="keys"):
        write_shards([{"__key__": "a.b", "json": {}}], tmp_path / "k")
    with pytest.raises(ValueError, match="duplicate"):
        write_shards([{"__key__": "a", "json": {}}, {"__key__": "a", "json": {}}], tmp_path / "k")
    assert not (tmp_path / "k").exists()
