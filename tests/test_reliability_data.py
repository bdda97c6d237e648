"""Issue #12 on the data side, each fault reproduced for real: unreadable shards stop the reader with one
message and a bounded skip log (1), manifests cannot point outside their directory or crash the reader
(2), the umask is read without flipping it under a concurrent thread (3), samples off the schema are
skipped and recorded (6), and the run-directory lock (8) refuses a live owner but not a dead one."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dd3g_core.io import LockedError, run_lock
from dd3g_core.shards import (
    ShardValidationError,
    SkipRecorder,
    count_skips,
    make_train_loader,
    read_skip_log,
    resolve_shard_urls,
    validate_shards,
    write_shards,
)
from dd3g_core.shards.health import SampleDecodeError
from dd3g_core.trajectories.sample import SampleSpec

ROOT = Path(__file__).resolve().parents[1]


def samples(n, bad=(), prefix="s"):
    """``n`` samples; those in ``bad`` carry a truncated PNG (they fail to decode)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        png = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
        yield {
            "__key__": f"{prefix}{i:04d}",
            "rgba.png": b"\x89PNG\r\n\x1a\ntruncated" if i in bad else png,
            "noise.npy": np.full((2, 3), i, np.float32),
            "json": {"i": i},
        }


def truncated_tars(directory: Path, n: int) -> list[Path]:
    """``n`` tar shards cut inside their first member: tarfile still recognises them, no sample reads."""
    out = []
    for k in range(n):
        path = directory / f"broken-{k:06d}.tar"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in ((f"k{k}.json", b"{}" * 2000), (f"k{k}.noise.npy", b"x" * 4000)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        path.write_bytes(buf.getvalue()[:1500])
        assert tarfile.is_tarfile(path)
        out.append(path)
    return out


def run_reader(args: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """Drain ``make_train_loader(**args)`` for 50 epochs in a fresh process (a reader that never stops
    fails the test by timeout instead of hanging it)."""
    script = f"""
import json, sys
from dd3g_core.shards import make_train_loader
loader = make_train_loader(**json.loads({json.dumps(json.dumps(args))}))
try:
    for _ in range(50):
        for _batch in loader:
            pass
except Exception as e:
    print("ERROR", type(e).__name__, str(e), sep="\\t")
    sys.exit(3)
print("DONE")
"""
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


# ----------------------------------------------------------------------------------- 1: unreadable data


def test_missing_or_non_tar_paths_are_refused_up_front(tmp_path):
    with pytest.raises(ShardValidationError, match=r"nope\.tar: no such file"):
        resolve_shard_urls(tmp_path / "nope.tar")
    text = tmp_path / "notes.tar"
    text.write_text("not a tar at all\n" * 100)
    with pytest.raises(ShardValidationError, match=r"notes\.tar: not a tar file"):
        resolve_shard_urls(text)
    os.mkfifo(tmp_path / "pipe.tar")  # opening it would block the reader for ever
    with pytest.raises(ShardValidationError, match=r"pipe\.tar: not a regular file"):
        resolve_shard_urls([str(tmp_path / "pipe.tar")])
    with pytest.raises(ShardValidationError, match="no such file"):
        make_train_loader(str(tmp_path / "missing-{000000..000003}.tar"), batch_size=1, num_workers=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_reader_of_only_broken_shards_stops_with_one_message(tmp_path, workers):
    tars = truncated_tars(tmp_path, 3)
    log = tmp_path / "skips.jsonl"
    args = {"urls_or_dir": [str(t) for t in tars], "batch_size": 2, "num_workers": workers, "epoch_samples": 4}
    res = run_reader({**args, "skip_log": str(log)})
    assert res.returncode == 3, res.stdout + res.stderr[-3000:]
    line = res.stdout.strip().splitlines()[-1]
    kind, message = line.split("\t")[1:]
    assert kind == "NoReadableShardsError" and "\n" not in message and "Traceback" not in message
    assert "none of its 3 shard(s) gives a readable sample" in message and "unexpected end of data" in message
    assert len(log.read_text().splitlines()) <= 3 * max(workers, 1) * 2  # a few records, not one per retry


def test_reader_of_a_shard_set_whose_samples_all_fail_stops(tmp_path):
    write_shards(samples(6, bad=range(6)), tmp_path / "v", samples_per_shard=2)
    validate_shards(tmp_path / "v")  # the files are intact: every sample is bad
    res = run_reader({"urls_or_dir": str(tmp_path / "v"), "batch_size": 2, "num_workers": 0, "epoch_samples": 4})
    assert res.returncode == 3, res.stdout + res.stderr[-3000:]
    assert f"{tmp_path / 'v'}: none of its 3 shard(s)" in res.stdout and "s0005: " in res.stdout


def test_skip_log_is_bounded_across_processes_and_epochs(tmp_path):
    """Half the samples are bad and shards are resampled: every pass, in every worker of every epoch
    (fresh processes), meets the same bad samples again."""
    write_shards(samples(40, bad=range(0, 40, 2)), tmp_path / "v", samples_per_shard=10)
    for workers in (0, 2):
        log = tmp_path / f"skips{workers}.jsonl"
        loader = make_train_loader(
            tmp_path / "v", 4, num_workers=workers, epoch_samples=200, skip_log=log, max_skip_records=5
        )
        for _ in range(3):
            assert sum(len(b["__key__"]) for b in loader) == 200 * max(workers, 1)
        records = read_skip_log(log)
        assert len(records) == 5  # max_skip_records in all, however many processes wrote
        assert len({r["key"] for r in records}) == 5 and all(int(r["key"][1:]) % 2 == 0 for r in records)
        # every skip counted: 600 good samples per worker came with about as many bad ones
        assert count_skips(log) > 300 * max(workers, 1)
    rec = SkipRecorder(tmp_path / "many.jsonl", max_records=100)
    for i in range(3000):
        rec(SampleDecodeError(f"k{i}", "x.png", "truncated " * 1000))  # long reasons are cut
    assert len(read_skip_log(tmp_path / "many.jsonl")) == 100 and count_skips(tmp_path / "many.jsonl") == 3000
    assert (tmp_path / "many.jsonl").stat().st_size < 100 * 700 and len(rec.skipped) == 100


# ------------------------------------------------------------------------------ 2: manifests from data


def _resign(directory: Path, change) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_manifest_file_names_are_confined_to_their_directory(tmp_path):
    from dd3g_core.io import sha256_file

    outside = tmp_path / "secret.tar"  # a real file outside the shard set, with a matching size and hash
    write_shards(samples(2), tmp_path / "other", samples_per_shard=2)
    outside.write_bytes((tmp_path / "other" / "shard-000000.tar").read_bytes())
    for name in ("../secret.tar", str(outside), "sub/shard.tar", "..", ""):
        d = tmp_path / f"v{abs(hash(name))}"
        write_shards(samples(2), d, samples_per_shard=2)

        def point_outside(m, name=name):
            m["files"][0].update(name=name, bytes=outside.stat().st_size, sha256=sha256_file(outside))

        _resign(d, point_outside)
        with pytest.raises(ShardValidationError, match="not a plain name inside the shard set"):
            validate_shards(d)
        with pytest.raises(ShardValidationError, match="not a plain name inside the shard set"):
            resolve_shard_urls(d, validate=False)


@pytest.mark.parametrize(
    "manifest, field",
    [
        ([], "the manifest is a JSON list"),
        ({"num_samples": 1}, "'files' is NoneType"),
        ({"num_samples": 1, "files": "shard-000000.tar"}, "'files' is str"),
        ({"num_samples": 1, "files": [1]}, r"files\[0\] is a int"),
        ({"num_samples": 1, "files": [{"name": "shard-000000.tar"}]}, r"files\[0\]\.bytes is None \(missing\)"),
        ({"files": []}, "'num_samples' is None"),
    ],
)
def test_malformed_manifest_is_a_validation_error(tmp_path, manifest, field):
    write_shards(samples(2), tmp_path / "v", samples_per_shard=2)
    (tmp_path / "v" / "manifest.json").write_text(json.dumps(manifest))
    for read in (validate_shards, lambda d: resolve_shard_urls(d, validate=False)):
        with pytest.raises(ShardValidationError, match=field):
            read(tmp_path / "v")


# -------------------------------------------------------------------------------------------- 3: umask


def test_umask_is_read_without_changing_it_under_a_concurrent_thread(tmp_path):
    from dd3g_core.io import _umask

    old = os.umask(0o022)
    made, stop = [], threading.Event()

    def create():
        while not stop.is_set() and len(made) < 3000:
            p = tmp_path / f"f{len(made)}"
            with open(p, "w"):
                pass
            made.append(p)

    try:
        thread = threading.Thread(target=create)
        thread.start()
        deadline = time.time() + 3
        while time.time() < deadline and thread.is_alive():
            assert _umask() == 0o022
        stop.set()
        thread.join()
    finally:
        os.umask(old)
    modes = {oct(p.stat().st_mode & 0o777) for p in made}
    assert len(made) > 50 and modes == {"0o644"}, modes


# --------------------------------------------------------------------------------- 6: off-schema samples


def test_reader_skips_and_records_samples_its_validator_rejects(tmp_path):
    rows = list(samples(6))
    rows[1]["noise.npy"] = np.zeros((3, 2), np.float32)  # wrong shape
    del rows[4]["noise.npy"]  # missing field
    write_shards(rows, tmp_path / "v", samples_per_shard=6)

    def noise_is_2x3(s):
        n = s.get("noise.npy")
        return [] if n is not None and n.shape == (2, 3) else [f"noise.npy is {None if n is None else n.shape}"]

    log = tmp_path / "skips.jsonl"
    loader = make_train_loader(
        tmp_path / "v", 2, num_workers=0, shuffle_buffer=0, epoch_samples=8, skip_log=log, validate_sample=noise_is_2x3
    )
    batches = list(loader)
    assert all(b["noise.npy"].shape == (2, 2, 3) for b in batches)  # every batch stacks
    assert {k for b in batches for k in b["__key__"]} == {"s0000", "s0002", "s0003", "s0005"}
    assert {r["key"]: r["reason"] for r in read_skip_log(log)} == {
        "s0001": "noise.npy is (3, 2)",
        "s0004": "noise.npy is None",
    }


def test_sample_spec_problems_never_raise_on_odd_data():
    spec = SampleSpec(num_views=2, latent=(4, 2, 2), camera_dim=3, resolution=4, num_recorded=None)
    good = {
        "__key__": "k",
        "input.png": np.zeros((8, 8, 4), np.uint8),
        "noise.npy": np.zeros((3, 4, 2, 2), np.float32),
        "cameras.npy": np.zeros((3, 3), np.float32),
        "viewmats.npy": np.zeros((2, 4, 4), np.float32),
        "ks.npy": np.zeros((2, 3, 3), np.float32),
        "views.npy": np.zeros((2, 3, 4, 4), np.float16),
        "xt.npy": np.zeros((5, 3, 4, 2, 2), np.float32),  # S unknown: any number of recorded states
        "json": {},
    }
    assert spec.problems(good) == []
    odd = {**good, "noise.npy": np.array(["a", "b"]), "cameras.npy": {"x": 1}, "json": [1], "input.png": b"png"}
    del odd["views.npy"]
    found = " | ".join(spec.problems(odd))
    for what in ("noise.npy is <U1 [2], not a numeric array", "cameras.npy is a dict", "missing views.npy"):
        assert what in found
    assert "json is a list" in found and "input.png is a bytes" in found
    assert "xt.npy shape (5, 3, 4, 2, 2) != (2," in " ".join(SampleSpec(2, (4, 2, 2), 3, 4, 2).problems(good))


# -------------------------------------------------------------------------------- 8: run directory lock


def test_run_lock_refuses_a_live_owner_and_ignores_a_dead_one(tmp_path):
    lock = tmp_path / "run" / ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from dd3g_core.io import run_lock\nimport time\nwith run_lock({str(lock)!r}):\n"
            "    print('held', flush=True)\n    time.sleep(600)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"another dd3g process \(pid {holder.pid} on "), run_lock(lock):
            pass
        os.kill(holder.pid, signal.SIGKILL)  # its lock file stays behind, naming a dead pid
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
    assert json.loads(lock.read_text())["pid"] == holder.pid
    with run_lock(lock):  # a dead owner's lock never blocks
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(LockedError, match="already holds"), run_lock(lock):
            pass
    with run_lock(lock):  # released on exit
        pass
