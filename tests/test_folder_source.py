"""The ``folder`` source of rgba_images (your own images): odd files, partitions, re-caching, retrain fingerprint.

Every image is made here, in tmp_path, at a few dozen pixels; the teacher is a random-weight TinyTeacher
with one DDIM step (the cache contract does not need a trained one).
"""

import dataclasses
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dd3g_core import synthesis as S
from dd3g_core import trajectories as tr
from dd3g_core.cli import main
from dd3g_core.io import stable_hash
from dd3g_core.profiles import get_profile
from dd3g_core.promotion import source_fingerprint, source_record
from dd3g_core.shards import content_hash, iter_samples
from dd3g_core.synthesis.config import version_record
from dd3g_core.synthesis.folder import FolderImage
from dd3g_core.teacher import TinyTeacher

SMOKE = get_profile("smoke")
FAST = dataclasses.replace(SMOKE.trajectories, num_noise_draws=1, steps=1, record_steps=(0,), guidance=1.0)


def folder_config(folder, **changes):
    return SMOKE.rgba.replace(generator="folder", folder=str(folder), **changes)


def disc(colour, size=48, background=(255, 255, 255)) -> np.ndarray:  # uint8 [size, size, 3]
    y, x = np.mgrid[:size, :size]
    rgb = np.empty((size, size, 3), np.uint8)
    rgb[:] = background
    rgb[(x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 4) ** 2] = colour
    return rgb


def save_png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow writes 16 bits for grey only)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def odd_folder(root: Path) -> Path:
    """Usable: RGB JPEG, RGBA PNG, 16-bit grey and RGB PNGs, CMYK JPEG, WebP. Not: the rest (and two ignored)."""
    d = root / "mine"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(disc((200, 40, 40))).save(d / "photo.jpg", quality=95)
    cut = np.zeros((48, 48, 4), np.uint8)
    cut[12:36, 14:34] = (30, 200, 60, 255)
    cut[11, 14:34, 3] = 128  # a soft edge: a real alpha channel
    Image.fromarray(cut).save(d / "sub" / "cutout.png")
    grey16 = np.full((48, 48), 65535, np.uint16)
    grey16[disc((0, 0, 0))[..., 0] == 0] = 26214  # 0.4 of full scale: 102 in 8 bits, not clipped to 255
    Image.fromarray(grey16).save(d / "deep16.png")
    rgb16 = np.full((48, 48, 3), 65535, np.uint16)
    rgb16[disc((0, 0, 0))[..., 0] == 0] = (40000, 10000, 5000)
    save_png16_rgb(d / "deep16rgb.png", rgb16)
    Image.fromarray(disc((40, 60, 210))).convert("CMYK").save(d / "print.jpg", quality=95)
    Image.fromarray(disc((250, 160, 20))).save(d / "sub" / "web.WEBP", lossless=True)  # any case
    frames = [Image.fromarray(disc((i * 80, 0, 0))) for i in range(3)]
    frames[0].save(d / "spin.gif", save_all=True, append_images=frames[1:])
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / "dot.png")
    Image.fromarray(np.full((48, 48, 3), 255, np.uint8)).save(d / "blank.png")
    (d / "notes.txt").write_text("not an image: not listed")
    Image.fromarray(disc((0, 0, 255))).save(d / ".hidden.png")
    return d


def test_odd_files_give_samples_for_the_usable_and_a_reason_for_each_other(tmp_path):
    folder = odd_folder(tmp_path)
    config = folder_config(folder, num_shards=1)
    summary, hit = S.synthesize_shard(tmp_path / "data", config, 0)
    assert not hit
    m = summary.manifest
    samples = {s["json"]["path"]: s for s in iter_samples(summary.directory)}
    assert set(samples) == {"photo.jpg", "sub/cutout.png", "deep16.png", "deep16rgb.png", "print.jpg", "sub/web.WEBP"}
    reasons = {r["path"]: [x["filter"] for x in r["reasons"]] for r in m["rejected"]}
    assert reasons == {
        "spin.gif": ["animated"],
        "broken.png": ["corrupt"],
        "dot.png": ["too_small"],
        "blank.png": ["empty"],
    }, m["rejected"]
    assert all(r.get("error") or r["stage"] == "filter" for r in m["rejected"])
    assert m["attempted"] == 10 and m["accepted"] == 6 and m["num_rejected"] == 4
    assert sorted(i["path"] for i in m["inputs"]) == sorted([*samples, *reasons])
    for path, s in samples.items():
        rgba, rec = s["rgba.png"], s["json"]
        assert rgba.shape == (32, 32, 4) and rec["key"] == s["__key__"] == FolderImage(Path(), path).key
        assert rec["alpha_source"] == ("input" if path == "sub/cutout.png" else "matting")
        assert rec["filters"]["passed"] and rgba[16, 16, 3] == 255
    centre = {p: s["rgba.png"][16, 16, :3].astype(int) for p, s in samples.items()}
    assert np.abs(centre["deep16.png"] - 102).max() <= 2  # 16 bits scaled to 8, not clipped
    assert np.abs(centre["deep16rgb.png"] - (156, 39, 19)).max() <= 2
    assert np.abs(centre["print.jpg"] - (40, 60, 210)).max() <= 12  # CMYK -> RGB (through JPEG)
    assert np.abs(centre["sub/cutout.png"] - (30, 200, 60)).max() <= 1
    assert np.abs(centre["sub/web.WEBP"] - (250, 160, 20)).max() <= 1
    assert samples["print.jpg"]["json"]["input"]["mode"] == "CMYK"
    assert samples["deep16.png"]["json"]["input"]["mode"] == "I;16"


def test_listing_errors_and_config_rules(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(S.NoImagesError, match=str(tmp_path / "empty")):
        S.list_images(str(tmp_path / "empty"))
    with pytest.raises(S.NoImagesError, match=r"glob .*nothing/\*\.png.* matches no file"):
        S.list_images(str(tmp_path / "nothing" / "*.png"))
    with pytest.raises(S.NoImagesError, match="does not exist"):
        S.list_images(str(tmp_path / "missing"))
    with pytest.raises(S.NoImagesError, match="holds no image"):  # the stage raises the same, before writing
        S.synthesize_shard(tmp_path / "data", folder_config(tmp_path / "empty"), 0)
    assert not (tmp_path / "data").exists()
    with pytest.raises(ValueError, match="needs rgba.folder"):
        SMOKE.rgba.replace(generator="folder")
    with pytest.raises(ValueError, match="only read by it"):
        SMOKE.rgba.replace(folder=str(tmp_path))
    with pytest.raises(ValueError, match="exact"):
        folder_config(tmp_path, matting="exact")
    # a glob: identities relative to the folder before the first wildcard
    folder = odd_folder(tmp_path)
    rels = [im.rel for im in S.list_images(str(folder / "**" / "*.png"))]
    assert "sub/cutout.png" in rels and "notes.txt" not in rels


def test_versions_of_the_generated_sources_are_pinned():
    """Adding the folder source changed no procedural / SDXL version or manifest config."""
    for name, version in (("tiny", "aa25946ac8ed8b2a"), ("smoke", "a4443352b813d50a"), ("full", "08d46e787dc235bf")):
        rgba = get_profile(name).rgba
        assert stable_hash(version_record(rgba)) == version, name
        assert "folder" not in rgba.to_record()
    assert S.stage_version(SMOKE.rgba) == "a4443352b813d50a"
    assert "rgba_images" not in source_record(SMOKE)


def add_disc(folder: Path, name: str, colour) -> Path:
    path = folder / name
    Image.fromarray(disc(colour, size=40)).save(path)
    return path


def shard_bytes(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_adding_an_image_recaches_only_its_partition_here_and_downstream(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        add_disc(folder, f"obj{i}.png", (40 * i, 200 - 30 * i, 90))
    config, data = folder_config(folder, num_shards=3, samples_per_shard=2), tmp_path / "data"
    teacher = TinyTeacher(seed=0).eval()

    def run() -> tuple[dict, dict, dict]:
        rgba, traj, hits = {}, {}, {}
        for k in range(config.num_shards):
            summary, hit = S.synthesize_shard(data, config, k, max_reject_share=0.5)
            out, traj_hit = tr.cache_shard(data, summary.directory, teacher, FAST, k, max_reject_share=0.1)
            rgba[k], traj[k], hits[k] = summary, out, (hit, traj_hit)
        return rgba, traj, hits

    rgba, traj, hits = run()
    assert not any(h for pair in hits.values() for h in pair)
    assert sum(s.num_samples for s in rgba.values()) == 6
    before = {k: (shard_bytes(rgba[k].directory), shard_bytes(traj[k].directory)) for k in rgba}

    new = FolderImage(Path(), "zebra.png")
    add_disc(folder, new.rel, (250, 200, 0))
    changed = new.shard(config.num_shards)
    rgba2, traj2, hits2 = run()
    assert hits2 == {k: (k != changed, k != changed) for k in range(config.num_shards)}
    for k in rgba:
        assert rgba2[k].directory == rgba[k].directory and traj2[k].directory == traj[k].directory
        if k != changed:  # untouched: same bytes, same files (not rewritten)
            assert (shard_bytes(rgba2[k].directory), shard_bytes(traj2[k].directory)) == before[k]
    assert rgba2[changed].num_samples == rgba[changed].num_samples + 1
    assert traj2[changed].num_samples == traj[changed].num_samples + FAST.num_noise_draws
    assert new.key in {s["__key__"] for s in iter_samples(rgba2[changed].directory)}

    # changing an image's content re-caches its partition; moving the whole folder re-caches nothing
    victim = next(im for im in S.list_images(str(folder)) if im.rel != new.rel)
    add_disc(folder, victim.rel, (10, 10, 250))
    assert not S.synthesize_shard(data, config, victim.shard(config.num_shards))[1]
    moved = shutil.move(str(folder), str(tmp_path / "elsewhere"))
    config = folder_config(moved, num_shards=3, samples_per_shard=2)
    assert all(S.synthesize_shard(data, config, k)[1] for k in range(config.num_shards))


def test_empty_partitions_are_published_empty_at_both_stages(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    add_disc(folder, "only.png", (200, 30, 30))
    config, data = folder_config(folder, num_shards=4), tmp_path / "data"
    empty = next(k for k in range(4) if k != FolderImage(Path(), "only.png").shard(4))
    summary, _ = S.synthesize_shard(data, config, empty, max_reject_share=0.5)
    assert summary.num_samples == 0 and summary.manifest["attempted"] == 0 and summary.manifest["inputs"] == []
    teacher = TinyTeacher(seed=0).eval()
    out, _ = tr.cache_shard(data, summary.directory, teacher, FAST, empty, max_reject_share=0.1)
    assert out.num_samples == 0 and content_hash(out) == content_hash({"files": []})


def test_retrain_fingerprint_follows_the_images_not_their_timestamps(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    first = add_disc(folder, "a.png", (200, 30, 30))
    add_disc(folder, "b.png", (30, 200, 30))
    profile = dataclasses.replace(SMOKE, rgba=folder_config(folder))
    cache = tmp_path / "data" / ".records" / "file-hashes.json"
    fp = source_fingerprint(profile, hash_cache=cache)
    assert source_fingerprint(profile, hash_cache=cache) == fp
    os.utime(first, ns=(1, 1))  # touched, same bytes
    assert source_fingerprint(profile, hash_cache=cache) == fp
    (folder / "notes.txt").write_text("not an image")
    assert source_fingerprint(profile, hash_cache=cache) == fp
    add_disc(folder, "c.png", (30, 30, 200))
    grown = source_fingerprint(profile, hash_cache=cache)
    assert grown != fp and source_fingerprint(profile, hash_cache=cache) == grown
    assert source_record(profile, hash_cache=cache)["rgba_images"]["images"] == 3
    assert source_record(profile)["rgba"] == S.stage_version(profile.rgba)  # the settings' version did not move


def test_cli_writes_the_shards_and_lists_the_rejects(tmp_path, capsys):
    folder = odd_folder(tmp_path)
    out = tmp_path / "data"
    assert main(["rgba", "--folder", str(folder), "-o", str(out), "--profile", "smoke", "--num-shards", "2"]) == 0
    text = capsys.readouterr().out
    assert "rejected spin.gif: animated" in text and "rejected dot.png: too_small" in text
    assert "6 image(s) accepted" in text
    config = folder_config(folder, num_shards=2)
    assert sum(S.synthesize_shard(out, config, k)[0].num_samples for k in range(2)) == 6  # the same partitions
    assert main(["rgba", "--folder", str(folder), "-o", str(out), "--profile", "smoke", "--num-shards", "2"]) == 0
    assert capsys.readouterr().out.count("reused") == 2
    (tmp_path / "none").mkdir()
    assert main(["rgba", "--folder", str(tmp_path / "none"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no image" in err[0] and str(tmp_path / "none") in err[0]


def test_dagster_asset_reads_a_folder_profile_file_and_student_versions_follow_the_data(tmp_path):
    import dagster as dg

    from pipelines.assets.rgba import rgba_images
    from pipelines.io_managers import StageRecordIOManager
    from pipelines.resources import DD3GSettings
    from pipelines.student_training import student_version_inputs, trajectories_content

    folder = odd_folder(tmp_path)
    profile = tmp_path / "mine.json"
    rgba = {"generator": "folder", "folder": str(folder), "num_shards": 1}
    profile.write_text(json.dumps({"base": "smoke", "rgba": rgba, "limits": {"rgba_max_reject_share": 0.5}}))
    settings = DD3GSettings(data_root=str(tmp_path / "data"), profile=str(profile), teacher_path="")
    resources = {"settings": settings, "io_manager": StageRecordIOManager(settings=settings)}
    result = dg.materialize([rgba_images], resources=resources, partition_key="00000")
    assert result.success
    record = result.output_for_node("rgba_images")["00000"]
    assert record["num_samples"] == 6
    assert record["stage_version"] == S.stage_version(folder_config(folder, num_shards=1))

    records = {"00000": {"content_hash": "c" * 16}}
    data = trajectories_content(settings, records)
    assert data is not None and data != trajectories_content(settings, {"00000": {"content_hash": "d" * 16}})
    smoke = DD3GSettings(data_root=str(tmp_path / "data"), profile="smoke", teacher_path="")
    assert trajectories_content(smoke, records) is None  # generated sources: versions unchanged
    inputs = student_version_inputs("2", SMOKE.distill, {"content_hash": "a" * 64}, Path("v1"), data)
    assert inputs["data"] == data and "data" not in student_version_inputs(
        "2", SMOKE.distill, {"content_hash": "a" * 64}, Path("v1")
    )
