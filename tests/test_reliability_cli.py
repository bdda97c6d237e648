"""Issue #12, item 10: every bad input is one ``dd3g: error:`` line and exit 2, never a traceback;
an unexpected error is one ``dd3g: internal error:`` line naming the log file with the traceback;
weight files and configs fail with messages that name the file or field; outputs never collide.

The table runs the installed ``dd3g`` console script (``python -m dd3g_core.cli`` without one) on
real broken files: truncated, foreign and non-safetensors weights, broken configs, corrupt images,
a decompression-bomb header, out-of-range options.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dd3g_core.cli import main
from dd3g_core.distill.config import apply_overrides, load_config
from dd3g_core.model import PEPD
from dd3g_core.paths import TINY_STUDENT_DIR, TINY_TEACHER_DIR
from dd3g_core.profiles import get_profile
from dd3g_core.teacher import TinyTeacher
from dd3g_core.weights import WeightsFileError, load_weights_file

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "samples"
BIRD = SAMPLES / "bird_rgba.png"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("dd3g")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "dd3g_core.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(cwd / "state"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A valid PNG signature + IHDR declaring w x h pixels, and no pixel data (~50 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def model_copy(root: Path, name: str, source: Path = TINY_STUDENT_DIR) -> Path:
    return Path(shutil.copytree(source, root / name))


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A folder of real broken inputs (shared by the table rows)."""
    d = tmp_path_factory.mktemp("bad")
    weights = (TINY_STUDENT_DIR / "model.safetensors").read_bytes()
    (model_copy(d, "truncated") / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (model_copy(d, "header_only") / "model.safetensors").write_bytes(weights[:5000])
    (model_copy(d, "empty_weights") / "model.safetensors").write_bytes(b"")
    shutil.copy(TINY_TEACHER_DIR / "model.safetensors", model_copy(d, "foreign") / "model.safetensors")
    shutil.copy(BIRD, model_copy(d, "png_weights") / "model.safetensors")
    (model_copy(d, "bad_json") / "config.json").write_text('{"format": "dd3g-pepd", ')
    (model_copy(d, "list_json") / "config.json").write_text("[1, 2, 3]")
    cfg = json.loads((TINY_STUDENT_DIR / "config.json").read_text())
    (model_copy(d, "bad_type") / "config.json").write_text(json.dumps({**cfg, "depth": "four"}))
    (model_copy(d, "bad_value") / "config.json").write_text(json.dumps({**cfg, "width": -96, "heads": 4}))
    teacher_weights = (TINY_TEACHER_DIR / "model.safetensors").read_bytes()
    (model_copy(d, "teacher_truncated", TINY_TEACHER_DIR) / "model.safetensors").write_bytes(teacher_weights[:-999])
    (model_copy(d, "teacher_bad_json", TINY_TEACHER_DIR) / "config.json").write_text("not json")
    (d / "broken.png").write_bytes(BIRD.read_bytes()[:300])
    (d / "text.png").write_text("hello, not an image")
    (d / "empty.png").write_bytes(b"")
    png_header_only(d / "bomb.png", 100_000, 100_000)
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(d / "white.png")
    (d / "a_file").write_text("x")
    (d / "out_bad_summary").mkdir()
    (d / "out_bad_summary" / "generate.json").write_text("{broken")
    (d / "folder.png").mkdir()
    from dd3g_core.ply import save_ply
    from dd3g_core.world import sample_object

    save_ply(sample_object(1, 200), d / "m.ply")
    (d / "truncated.ply").write_bytes((d / "m.ply").read_bytes()[:400])
    return d


G = ["generate", str(BIRD), "-o", "out"]
TABLE = [
    # weights and configs (issue: a truncated or foreign model.safetensors escaped as SafetensorError)
    ("truncated weights", [*G, "--checkpoint", "truncated"], "truncated/model.safetensors"),
    ("weights cut in the header", [*G, "--checkpoint", "header_only"], "not a readable safetensors file"),
    ("empty weights", [*G, "--checkpoint", "empty_weights"], "empty_weights/model.safetensors is empty"),
    ("foreign weights", [*G, "--checkpoint", "foreign"], "foreign/model.safetensors does not match"),
    ("png as weights", [*G, "--checkpoint", "png_weights"], "png_weights/model.safetensors is not a readable"),
    ("config not json", [*G, "--checkpoint", "bad_json"], "bad_json/config.json is not valid JSON"),
    ("config a list", [*G, "--checkpoint", "list_json"], "must hold a JSON object"),
    ("config wrong type", [*G, "--checkpoint", "bad_type"], "PEPDConfig.depth must be an integer"),
    ("config bad value", [*G, "--checkpoint", "bad_value"], "bad_value/config.json is not a valid PEPD config"),
    ("not a checkpoint", [*G, "--checkpoint", "folder.png"], "not a PEPD checkpoint folder"),
    ("teacher truncated", [*G, "--teacher", "teacher_truncated"], "teacher_truncated/model.safetensors"),
    ("teacher config", [*G, "--teacher", "teacher_bad_json"], "teacher_bad_json/config.json is not valid JSON"),
    # images
    ("truncated png", ["generate", "broken.png", "-o", "out"], "broken.png: corrupt"),
    ("text as png", ["generate", "text.png", "-o", "out"], "not a recognised image format"),
    ("empty image", ["generate", "empty.png", "-o", "out"], "file is empty"),
    ("bomb header", ["generate", "bomb.png", "-o", "out"], "decompression bomb"),
    ("blank image", ["generate", "white.png", "-o", "out"], "white.png: the image has nothing in it"),
    ("missing image", ["generate", "nope.png", "-o", "out"], "nope.png does not exist"),
    ("folder as image", ["generate", "folder.png", "-o", "out"], "is a folder, not an image"),
    ("output is a file", ["generate", str(BIRD), "-o", "a_file"], "-o a_file is a file"),
    ("broken summary", ["generate", str(BIRD), "-o", "out_bad_summary"], "generate.json is not a readable summary"),
    # option bounds (issue: memory bombs through --input-resolution and the render sizes)
    ("input resolution", [*G, "--input-resolution", "100000"], "--input-resolution: expected an integer in 1..1024"),
    ("resolution 0", [*G, "--resolution", "0"], "--resolution: expected an integer in 1..2048"),
    ("frames", [*G, "--frames", "1000000"], "--frames: expected an integer in 1..720"),
    ("num samples", [*G, "--num-samples", "0"], "--num-samples: expected an integer in 1..256"),
    ("interp steps", [*G, "--interpolate", "2", "--interp-steps", "1"], "--interp-steps: expected an integer in 2..64"),
    ("seed overflow", [*G, "--seed", str(10**30)], "--seed: expected an integer in -2^63..2^63-1"),
    ("not a number", [*G, "--frames", "many"], "--frames: expected an integer"),
    ("render budget", [*G, "--resolution", "2048", "--frames", "36"], "more than the limit"),
    (
        "interp budget",
        [*G, "--resolution", "1024", "--frames", "8", "--interpolate", "3", "--interp-steps", "64"],
        "--interp-steps asks for 256 images",
    ),
    ("threads", [*G, "--threads", "-1"], "--threads: expected an integer in 0..1024"),
    ("fps 0", ["render-turntable", "m.ply", "-o", "s.gif", "--fps", "0"], "--fps: expected a number > 0"),
    ("fps nan", ["render-turntable", "m.ply", "-o", "s.gif", "--fps", "nan"], "--fps: expected a number > 0"),
    ("elevation", ["render-turntable", "m.ply", "-o", "s.gif", "--elevation", "inf"], "--elevation"),
    ("turntable budget", ["render-turntable", "m.ply", "-o", "s.gif", "--resolution", "2048"], "more than the limit"),
    ("truncated ply", ["render-turntable", "truncated.ply", "-o", "s.gif"], "truncated.ply"),
    ("grid ncols", ["render-grid", "m.ply", "-o", "g.png", "--ncols", "1000000000"], "--ncols"),
    ("grid no azimuths", ["render-grid", "m.ply", "-o", "g.png", "--azimuths", ","], "--azimuths"),
    ("grid inf azimuth", ["render-grid", "m.ply", "-o", "g.png", "--azimuths", "0,inf"], "--azimuths"),
    ("grid too many", ["render-grid", "m.ply", "-o", "g.png", "--azimuths", ",".join(["0"] * 65)], "--azimuths"),
    ("world gaussians", ["world", "sample", "--seed", "1", "-o", "w.ply", "--num-gaussians", str(10**9)], "1..2000000"),
    ("world seed", ["world", "show-spec", "--seed", str(10**30)], "--seed"),
    ("teacher threads", ["teacher", "pretrain", "--threads", "0"], "--threads: expected an integer in 1..1024"),
    # usage errors are one line too
    ("no command", [], "the following arguments are required"),
    ("unknown command", ["bogus"], "invalid choice: 'bogus'"),
    ("missing -o", ["generate", str(BIRD)], "the following arguments are required: -o/--output"),
]


@pytest.fixture(scope="module")
def table_results(bad) -> dict[str, subprocess.CompletedProcess]:
    """Every row of the table run once, a few processes at a time (most of the time is imports)."""
    from concurrent.futures import ThreadPoolExecutor

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=max(1, min(4, cores))) as pool:
        futures = {name: pool.submit(run_cli, *args, cwd=bad) for name, args, _ in TABLE}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name,expected", [(row[0], row[2]) for row in TABLE], ids=[row[0] for row in TABLE])
def test_bad_input_is_one_line_and_exit_2(table_results, name, expected):
    res = table_results[name]
    lines = res.stderr.splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("dd3g: error: "), res.stderr[-3000:]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in res.stdout + res.stderr


def test_unexpected_error_is_one_line_naming_its_log(tmp_path, monkeypatch, capsys):
    """A bug (here a forced RuntimeError) is exit 1 with the log path; the traceback is in the log."""
    import dd3g_core.world as world

    def broken(seed):
        raise RuntimeError("index 7 is out of bounds\nfor axis 0")

    monkeypatch.setattr(world, "object_spec", broken)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert main(["world", "show-spec", "--seed", "3"]) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("dd3g: internal error: RuntimeError: index 7 is out of bounds for axis 0; ")
    assert "please report it to" in lines[0]
    log = Path(re.search(r"the traceback is in (\S+);", lines[0]).group(1))
    assert log.parent == tmp_path / "state" / "dd3g"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text
    assert "dd3g world show-spec --seed 3" in text

    # an unwritable state folder: the log goes to the temp folder instead
    (tmp_path / "blocked").write_text("a file, not a folder")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "blocked"))
    assert main(["world", "show-spec", "--seed", "3"]) == 1
    fallback = Path(re.search(r"the traceback is in (\S+);", capsys.readouterr().err).group(1))
    assert fallback.is_file() and "in broken" in fallback.read_text()
    fallback.unlink()


def test_expected_errors_from_anywhere_in_dd3g_are_one_line(monkeypatch, capsys):
    """dd3g's own error classes (any base) and library "bad input" errors are exit 2, one line."""
    import pickle

    from safetensors import SafetensorError

    import dd3g_core.world as world
    from dd3g_core.teacher.loading import TeacherChangedError  # a RuntimeError, but dd3g's own

    errors = (TeacherChangedError("changed"), SafetensorError("bad header"), EOFError(), pickle.UnpicklingError("no"))
    for error in errors:
        monkeypatch.setattr(world, "object_spec", lambda seed, e=error: (_ for _ in ()).throw(e))
        assert main(["world", "show-spec", "--seed", "3"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dd3g: error: ") and err.count("\n") == 1


# -- weight files ------------------------------------------------------------------------------


def test_weight_loaders_name_the_unreadable_file(tmp_path):
    weights = (TINY_STUDENT_DIR / "model.safetensors").read_bytes()
    for name, data in [("truncated", weights[:-100]), ("garbage", b"\x00" * 64), ("png", BIRD.read_bytes())]:
        folder = model_copy(tmp_path, name)
        (folder / "model.safetensors").write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(str(folder / "model.safetensors"))):
            PEPD.from_pretrained(folder)
        with pytest.raises(WeightsFileError, match="not a readable safetensors file"):
            load_weights_file(PEPD("tiny", _meta=True), folder / "model.safetensors")
    teacher = model_copy(tmp_path, "teacher", TINY_TEACHER_DIR)
    (teacher / "model.safetensors").write_bytes((TINY_TEACHER_DIR / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError, match=re.escape(str(teacher / "model.safetensors"))):
        TinyTeacher.from_pretrained(teacher)


def test_weights_of_another_precision_load_and_non_float_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(TINY_STUDENT_DIR / "model.safetensors"))
    half = model_copy(tmp_path, "half")
    save_file({k: v.half() for k, v in sd.items()}, str(half / "model.safetensors"))
    model = PEPD.from_pretrained(half)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ints = model_copy(tmp_path, "ints")
    save_file({k: v.to(torch.int32) for k, v in sd.items()}, str(ints / "model.safetensors"))
    with pytest.raises(ValueError, match="non-float tensors"):
        PEPD.from_pretrained(ints)


# -- trainer --set overrides --------------------------------------------------------------------

BAD_SETS = [
    ("steps=abc", "DistillConfig.steps must be an integer, got 'abc'"),
    ("steps=1.5", "DistillConfig.steps must be an integer, got 1.5"),
    ("steps=true", "DistillConfig.steps must be an integer"),
    ("steps=0", "DistillConfig.steps must be >= 1"),
    ("lr=-1", "DistillConfig.lr must be > 0"),
    ("lr=NaN", "DistillConfig.lr must be a number"),
    ("lr=fast", "DistillConfig.lr must be a number, got 'fast'"),
    ("implicit_ramp=[1]", "DistillConfig.implicit_ramp must be a list of 2 integers, got [1]"),
    ("implicit_ramp=[1,", "DistillConfig.implicit_ramp must be a list of 2 integers, got '[1,' (not valid JSON)"),
    ("implicit_ramp=[9,1]", "DistillConfig.implicit_ramp must be [start, end] with start <= end"),
    ("implicit_t_range=0.5", "DistillConfig.implicit_t_range must be a list of 2 numbers"),
    ("model_overrides.depth=x", "DistillConfig.model_overrides.depth must be an integer, got 'x'"),
    ("model_overrides.dept=2", "unknown PEPDConfig key 'dept'"),
    ('model_overrides={"depth": "x"}', "DistillConfig.model_overrides.depth must be an integer"),
    ("model_overrides=[1]", "DistillConfig.model_overrides must be a JSON object"),
    ("mixed_precision=fp8", "DistillConfig.mixed_precision must be one of"),
    ("render_backend=gpu", "DistillConfig.render_backend must be one of 'auto', 'gsplat', 'cpu'"),
    ("implicit_guidance=strong", "DistillConfig.implicit_guidance must be a number or null"),
    ("ema_decay=1", "DistillConfig.ema_decay must be in [0, 1)"),
    ("num_workers=-1", "DistillConfig.num_workers must be >= 0"),
    ("stepz=3", "unknown DistillConfig keys ['stepz']"),
    ("steps", "--set expects key=value"),
]


@pytest.mark.parametrize("item,message", BAD_SETS, ids=[b[0] for b in BAD_SETS])
def test_every_bad_set_names_the_field(item, message):
    with pytest.raises(ValueError) as e:
        load_config(preset="tiny", overrides=[item])
    text = str(e.value)
    assert message in text and "\n" not in text
    if "=" in item:
        assert text.startswith(f"--set {item}: ")


def test_set_values_keep_their_meaning():
    cfg = load_config(preset="tiny", overrides=["out=123", "teacher=null", "lr=1", "implicit_guidance=null"])
    assert cfg.out == "123" and cfg.teacher is None and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert load_config(preset="tiny") == get_profile("tiny").distill  # a preset is its profile's settings, unchanged


def test_bad_config_files_name_the_file(tmp_path):
    bad_json = tmp_path / "run.json"
    bad_json.write_text('{"steps": 3,')
    with pytest.raises(ValueError, match=re.escape(f"config file {bad_json} is not valid JSON")):
        load_config(bad_json)
    bad_json.write_text('{"steps": "3"}')
    with pytest.raises(ValueError, match="DistillConfig.steps must be an integer, got '3'"):
        load_config(bad_json)
    bad_json.write_text("[1]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_config(bad_json)
    with pytest.raises(ValueError, match="lr"):
        apply_overrides(load_config(preset="smoke"), ["lr=0"])


# -- outputs never collide --------------------------------------------------------------------


def test_inputs_with_the_same_stem_keep_both_outputs(tmp_path):
    """a/x.png then b/x.png into one -o folder (and both in one call): both kept, mapping recorded."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    shutil.copy(SAMPLES / "bird_rgba.png", a)
    shutil.copy(SAMPLES / "anya_rgba.png", b)
    small = ["--frames", "1", "--resolution", "16"]
    out = tmp_path / "out"
    assert main(["generate", str(a), "-o", str(out), *small]) == 0
    first = (out / "x_s0.ply").read_bytes()
    assert main(["generate", str(b), "-o", str(out), *small]) == 0
    assert (out / "x_s0.ply").read_bytes() == first  # a's outputs are untouched
    assert (out / "x-2_s0.ply").is_file() and (out / "x-2_input.png").is_file()
    summary = json.loads((out / "generate.json").read_text())
    assert {k: v["image"] for k, v in summary["outputs"].items()} == {"x": str(a), "x-2": str(b)}
    assert summary["name"] == "x-2" and summary["samples"][0]["ply"] == str(out / "x-2_s0.ply")
    assert main(["generate", str(a), "-o", str(out), *small]) == 0  # a rerun of a replaces a's own outputs
    assert sorted(json.loads((out / "generate.json").read_text())["outputs"]) == ["x", "x-2"]
    assert not (out / "x-3_s0.ply").exists()

    both = tmp_path / "both"
    assert main(["generate", str(a), str(b), "-o", str(both), *small]) == 0
    summary = json.loads((both / "generate.json").read_text())
    assert {k: v["image"] for k, v in summary["outputs"].items()} == {"x": str(a), "x-2": str(b)}
    assert (both / "x_s0.ply").read_bytes() == first


# -- the library under the CLI -------------------------------------------------------------------


def test_save_turntable_refuses_a_zero_fps(tmp_path):
    """``fps=0`` was a ZeroDivisionError inside the GIF writer."""
    from dd3g_core.exports import save_turntable
    from dd3g_core.world import sample_object

    with pytest.raises(ValueError, match="fps must be a number in"):
        save_turntable(sample_object(1, 50), tmp_path / "s.gif", num_frames=1, resolution=8, fps=0)
    assert not (tmp_path / "s.gif").exists()


def test_cli_limits_agree_with_the_library():
    from dd3g_core.cli.generate import INPUT_RESOLUTION
    from dd3g_core.generate import MAX_INPUT_RESOLUTION, prepare_image

    assert INPUT_RESOLUTION == (1, MAX_INPUT_RESOLUTION)
    with pytest.raises(ValueError, match="resolution must be in 1..1024"):
        prepare_image(BIRD, resolution=MAX_INPUT_RESOLUTION + 1)


def test_python_m_dd3g_core_cli_runs_the_same_main(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "dd3g_core.cli", "world", "show-spec", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["seed"] == 3, ok.stderr
