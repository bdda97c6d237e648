"""`dd3g generate`: input preparation, outputs per sample, interpolation, and bad inputs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dd3g_core.cli import main as cli_main
from dd3g_core.generate import EmptyImageError, prepare_image, slerp
from dd3g_core.model import PEPD
from dd3g_core.ply import load_ply
from dd3g_core.teacher import TinyTeacher

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "samples"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    teacher = TinyTeacher(seed=0)
    teacher.save_pretrained(root / "teacher")
    torch.manual_seed(0)
    student = PEPD("tiny")
    student.init_from_teacher(teacher.unet)
    for lin in student.heads.linears.values():
        torch.nn.init.normal_(lin.weight, std=0.02)
    student.save_pretrained(root / "pepd")
    return root


def plain_background_rgb(path, size=96):
    img = np.full((size, size, 3), (30, 200, 40), np.uint8)
    img[30:70, 25:75] = (200, 60, 90)
    Image.fromarray(img).save(path)
    return path


def test_prepare_image_paths(tmp_path):
    rgba, rec = prepare_image(SAMPLES / "bird_rgba.png")
    assert rgba.shape == (64, 64, 4) and rec["matting"] == "input alpha" and rec["coverage"] > 0.05
    rgba, rec = prepare_image(plain_background_rgb(tmp_path / "plain.png"))
    assert rec["matting"] == "colorkey" and not rec["had_alpha"]
    a = rgba[..., 3] > 128
    ys, xs = np.nonzero(a)
    assert abs((ys.min() + ys.max()) / 2 - 31.5) <= 1.5 and abs((xs.min() + xs.max()) / 2 - 31.5) <= 1.5  # recentred
    noisy = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "photo.png")
    with pytest.raises(ValueError, match="rembg"):
        prepare_image(tmp_path / "photo.png")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "white.png")
    with pytest.raises(EmptyImageError, match="nothing in it"):
        prepare_image(tmp_path / "white.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="corrupt"):
        prepare_image(tmp_path / "broken.png")


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, 8, 8, generator=g), torch.randn(5, 3, 8, 8, generator=g)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    mid = slerp(a, b, 0.5)
    assert abs(mid.norm() / a.norm() - 1) < 0.05  # a linear mix would shrink to ~0.71


def test_generate_cli_writes_samples_and_interpolation(tmp_path, models, capsys):
    out = tmp_path / "out"
    code = cli_main(
        [
            "generate",
            str(SAMPLES / "anya_rgba.png"),
            "-o",
            str(out),
            "--checkpoint",
            str(models / "pepd"),
            "--teacher",
            str(models / "teacher"),
            "--num-samples",
            "2",
            "--seed",
            "3",
            "--interpolate",
            "9",
            "--interp-steps",
            "3",
            "--frames",
            "4",
            "--resolution",
            "48",
            "--background",
            "black",
        ]
    )
    assert code == 0, capsys.readouterr().err
    grid = np.asarray(Image.open(out / "anya_rgba_s3_views.png").convert("RGB"))
    assert (grid[:2, :2] < 100).all()  # on black: the corner of the first view is dark (near 255 on white)
    for seed in (3, 4):
        g = load_ply(out / f"anya_rgba_s{seed}.ply")
        assert g.means.shape == (4096, 3) and torch.isfinite(g.means).all()
        gif = Image.open(out / f"anya_rgba_s{seed}.gif")
        assert gif.n_frames == 4 and gif.size == (48, 48)
        assert Image.open(out / f"anya_rgba_s{seed}_views.png").size == (4 * 48, 2 * 48)
    a, b = load_ply(out / "anya_rgba_s3.ply"), load_ply(out / "anya_rgba_s4.ply")
    assert not torch.allclose(a.means, b.means)  # different noise, different object
    first = load_ply(out / "anya_rgba_interp_3_9_00.ply")
    assert torch.allclose(first.means, a.means, atol=1e-5)  # slerp starts at seed 3's N
    assert Image.open(out / "anya_rgba_interp_3_9.png").size == (3 * 48, 4 * 48)
    summary = json.loads((out / "generate.json").read_text())
    assert [s["seed"] for s in summary["samples"]] == [3, 4] and summary["interpolation"]["steps"] == 3


def test_generate_cli_errors_are_one_line(tmp_path, models, capsys):
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "white.png")
    args = ["-o", str(tmp_path / "o"), "--checkpoint", str(models / "pepd"), "--teacher", str(models / "teacher")]
    assert cli_main(["generate", str(tmp_path / "white.png"), *args]) == 2
    assert "nothing in it" in capsys.readouterr().err
    assert cli_main(["generate", str(tmp_path / "missing.png"), *args]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["generate", str(SAMPLES / "bird_rgba.png"), *args, "--background", "2,0,0"]) == 2
    assert "--background '2,0,0'" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "generate",
                str(SAMPLES / "bird_rgba.png"),
                "-o",
                str(tmp_path / "o"),
                "--checkpoint",
                str(tmp_path / "nope"),
            ]
        )
        == 2
    )
    assert "not a PEPD checkpoint" in capsys.readouterr().err


def test_shipped_student_generates_from_the_console_script(tmp_path):
    """The installed `dd3g` script with its defaults: the shipped tiny student and teacher."""
    dd3g = Path(sys.executable).with_name("dd3g")
    res = subprocess.run(
        [
            str(dd3g),
            "generate",
            str(SAMPLES / "bird_rgba.png"),
            "-o",
            str(tmp_path),
            "--frames",
            "2",
            "--resolution",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "bird_rgba_s0.ply").is_file() and (tmp_path / "bird_rgba_s0.gif").is_file()
