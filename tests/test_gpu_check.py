"""benchmarks/gpu_check.py at toy sizes on the CPU (``--cpu --tiny``): every section runs and every BAR passes,
``--out`` holds the same as JSON, timings are SKIP lines on a CPU; bad input is one line and exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# passive OpenMP workers: spinning ones slow every op several-fold when other jobs share the cores
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}


def run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_cpu_tiny_run_passes_every_bar(tmp_path):
    out = tmp_path / "check.json"
    res = run("--cpu", "--tiny", "--out", str(out))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    bars = [line.split() for line in res.stdout.splitlines() if line.startswith("BAR ")]
    assert all(len(b) == 5 and b[-1] == "PASS" for b in bars), bars
    judged = {b[1] for b in bars}
    assert {
        "raster_image_max_abs",
        "raster_grad_rel_err",
        "distill_step_finite",
        "checkpointing_same_loss_rel",
        "train_losses_finite",
        "train_checkpoint_written",
        "train_resumed",
    } <= judged
    skipped = {line.split()[1] for line in res.stdout.splitlines() if line.startswith("SKIP ")}
    assert {"student_ms_per_image_batch1", "speedup_batch1", "distill_max_batch_80gb", "gpu_check_seconds"} <= skipped
    assert "resumed from" in res.stdout and "what limits the student" in res.stdout
    record = json.loads(out.read_text())
    assert [b["name"] for b in record["bars"]] == [b[1] for b in bars]
    assert all(b["status"] == "PASS" for b in record["bars"]) and record["tiny"] is True
    assert set(record["seconds"]) == {"raster", "latency", "distill_step", "training"}


def test_bad_input_is_one_line_naming_what_to_do(tmp_path):
    res = run("--cpu")
    assert res.returncode == 2 and "add --tiny" in res.stderr and "Traceback" not in res.stderr
    missing = tmp_path / "imagedream-ipmv-diffusers"
    res = run("--teacher", str(missing))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert str(missing) in res.stderr and "leave --teacher out" in res.stderr
    if not torch.cuda.is_available():
        res = run()
        assert res.returncode == 2 and "--cpu --tiny" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_out_of_memory_message_names_the_options_and_a_smaller_batch():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_check_steps import oom_message
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    text = oom_message("default", 4, 13, 23.6)
    assert "batch_size=2" in text and "gradient_checkpointing=true" in text and "freeze_phase1_blocks=13" in text
    assert "24 GiB" in text


def test_unknown_section_is_refused():
    res = run("--cpu", "--tiny", "--only", "raster,nope")
    assert res.returncode == 2 and "unknown sections ['nope']" in res.stderr
