"""Turntables, view grids and the ``dd3g`` command line (small renders: 32-48 px, few frames)."""

from __future__ import annotations

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest

from dd3g_core.cli import main
from dd3g_core.exports import save_turntable, save_views_grid, turntable_frames, views_grid
from dd3g_core.ply import load_ply, save_ply
from dd3g_core.render.views import orbit_views, to_uint8
from dd3g_core.world import object_spec, sample_object


@pytest.fixture(scope="module")
def obj():
    return sample_object(6, 600)  # an asymmetric object: no two turntable frames coincide


@pytest.fixture()
def model_ply(tmp_path, obj):
    path = tmp_path / "model.ply"
    save_ply(obj, path)
    return path


def only_outputs(directory, *names):
    """Atomic writes leave no temporary files behind."""
    assert sorted(os.listdir(directory)) == sorted(names)


def ffmpeg_available() -> bool:
    try:
        import imageio_ffmpeg

        return os.path.exists(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:
        return False


# -- exports ----------------------------------------------------------------------------------


def test_turntable_frames(obj):
    frames = turntable_frames(obj, num_frames=4, elevation_deg=20.0, resolution=32, background=(1.0, 1.0, 1.0))
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    rgb, _ = orbit_views(obj, [90.0], 20.0, resolution=32, background=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(frames[1], to_uint8(rgb[0]))
    assert (frames[:, 0, 0] == 255).all()  # white corners


def test_gif_turntable(tmp_path, obj):
    path = save_turntable(obj, tmp_path / "spin.gif", num_frames=5, resolution=32, fps=10)
    frames = iio.imread(path, index=None)
    assert frames.shape[:3] == (5, 32, 32)
    assert iio.immeta(path)["loop"] == 0  # loops forever
    only_outputs(tmp_path, "spin.gif")


@pytest.mark.skipif(not ffmpeg_available(), reason="no ffmpeg binary for imageio")
def test_mp4_turntable_rounds_to_macro_blocks(tmp_path, obj):
    path = save_turntable(obj, tmp_path / "spin.mp4", num_frames=4, resolution=40)
    frames = iio.imread(path, index=None, plugin="FFMPEG")
    assert frames.shape[0] == 4 and frames.shape[1] % 16 == 0 and frames.shape[1] == frames.shape[2]
    only_outputs(tmp_path, "spin.mp4")


def test_bad_turntable_extension(tmp_path, obj):
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        save_turntable(obj, tmp_path / "spin.avi", num_frames=2, resolution=16)
    only_outputs(tmp_path)


def test_views_grid_layout():
    imgs = np.stack([np.full((4, 5, 3), i * 40, np.uint8) for i in range(5)])
    grid = views_grid(imgs, ncols=3)
    assert grid.shape == (8, 15, 3)
    assert (grid[4:, 10:] == 255).all()  # empty sixth cell
    assert (grid[4:, 5:10] == 160).all()  # fifth image: row 1, column 1
    padded = views_grid(imgs.astype(np.float32) / 255.0, ncols=2, pad=1)
    assert padded.shape == (3 * 4 + 2, 2 * 5 + 1, 3)
    rgba = views_grid(np.zeros((2, 4, 4, 4), np.uint8), ncols=1)
    assert rgba.shape == (8, 4, 4)
    with pytest.raises(ValueError):
        views_grid(np.zeros((4, 4, 3)))


def test_save_views_grid(tmp_path, obj):
    path = save_views_grid(obj, tmp_path / "grid.png", azimuths=(0, 120, 240), resolution=32, ncols=2)
    assert iio.imread(path).shape == (64, 64, 3)
    with pytest.raises(ValueError, match=r"\.png"):
        save_views_grid(obj, tmp_path / "grid.jpg", resolution=16)
    only_outputs(tmp_path, "grid.png")


# -- CLI --------------------------------------------------------------------------------------


def test_cli_world_sample_and_spec(tmp_path, capsys):
    out, preview = tmp_path / "obj.ply", tmp_path / "obj.png"
    args = [
        "world",
        "sample",
        "--seed",
        "3",
        "-o",
        str(out),
        "--num-gaussians",
        "400",
        "--preview",
        str(preview),
        "--resolution",
        "32",
    ]
    assert main(args) == 0
    g = load_ply(out)
    assert g.num_gaussians == 400
    assert all((a == b).all() for a, b in zip(g.parameters(), sample_object(3, 400).parameters()))
    assert iio.imread(preview).shape == (32, 4 * 32, 3)
    capsys.readouterr()
    assert main(["world", "show-spec", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == object_spec(3)


def test_cli_render_commands(tmp_path, model_ply, capsys):
    gif, grid = tmp_path / "spin.gif", tmp_path / "grid.png"
    assert (
        main(
            [
                "render-turntable",
                str(model_ply),
                "-o",
                str(gif),
                "--frames",
                "3",
                "--resolution",
                "24",
                "--elevation",
                "10",
                "--background",
                "0,128,255",
            ]
        )
        == 0
    )
    frames = iio.imread(gif, index=None)
    assert frames.shape[:3] == (3, 24, 24)
    np.testing.assert_allclose(frames[0, 0, 0, :3], [0, 128, 255], atol=8)  # GIF palettes are approximate
    assert (
        main(
            [
                "render-grid",
                str(model_ply),
                "-o",
                str(grid),
                "--resolution",
                "24",
                "--background",
                "black",
                "--azimuths",
                "0,90",
            ]
        )
        == 0
    )
    assert iio.imread(grid).shape == (24, 48, 3)


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda d, m: ["render-turntable", str(d / "missing.ply"), "-o", str(d / "s.gif")], "no such PLY file"),
        (lambda d, m: ["render-turntable", str(m), "-o", str(d / "s.avi")], ".gif or .mp4"),
        (lambda d, m: ["render-grid", str(d / "junk.ply"), "-o", str(d / "g.png")], "not a readable PLY"),
        (lambda d, m: ["render-grid", str(m), "-o", str(d / "g.jpg")], ".png"),
        (lambda d, m: ["world", "sample", "--seed", "-4", "-o", str(d / "o.ply")], "seed must be a non-negative"),
        (lambda d, m: ["world", "sample", "--seed", "1", "-o", str(d / "o.txt")], ".ply"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, model_ply, capsys, make_args, message):
    (tmp_path / "junk.ply").write_bytes(b"definitely not a ply")
    assert main(make_args(tmp_path, model_ply)) == 2
    err = capsys.readouterr().err
    assert err.startswith("dd3g: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_usage_errors(capsys):
    assert main([]) == 2
    assert main(["render-turntable", "m.ply", "-o", "x.gif", "--background", "pink"]) == 2
    assert "background must be" in capsys.readouterr().err
    assert main(["--help"]) == 0
