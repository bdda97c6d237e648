"""Issue #12, item 9: a small file that decodes to a huge image must not drive memory up.

A 270 KB PNG of 9000 x 9000 mostly flat pixels (81 Mpx, under PIL's decompression-bomb limit)
used to take `prepare_image` (matting + recentring at full size) from 0.6 GB to 10.7 GB peak
RSS. Images larger than ``MAX_WORKING_SIDE`` are now reduced while they are decoded, so the peak
grows by about the decoded image (~0.5 GB). The subprocess runs under an address-space cap, so
the old code fails there with a MemoryError instead of exhausting the machine.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dd3g_core.generate import MAX_WORKING_SIDE, prepare_image
from dd3g_core.synthesis.image_io import downscale_rgba, load_image_rgba

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "samples"
PEAK_GROWTH_MB = 1200  # allowed growth of the peak RSS (measured: ~500 MB; before the fix: ~10,000 MB)
ADDRESS_SPACE_HEADROOM_MB = 3000  # RLIMIT_AS above the interpreter's size once everything is imported


def big_flat_png(path: Path, size: int = 9000, bg=(30, 200, 40), fg=(200, 60, 90)) -> Path:
    """A size x size RGB PNG, a plain backdrop with a centred box, streamed row by row (~270 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    y0, y1, x0, x1 = size // 3, 2 * size // 3, size // 4, 3 * size // 4
    plain = b"\x00" + bytes(bg) * size
    boxed = b"\x00" + bytes(bg) * x0 + bytes(fg) * (x1 - x0) + bytes(bg) * (size - x1)
    z = zlib.compressobj(9)
    idat = b"".join([z.compress(boxed if y0 <= y < y1 else plain) for y in range(size)] + [z.flush()])
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


MEASURE = r"""
import json, resource, sys, time
from dd3g_core.generate import prepare_image
import dd3g_core.cli, dd3g_core.synthesis.matting, dd3g_core.synthesis.postprocess, scipy.ndimage

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024  # MB
path, headroom = sys.argv[1], int(sys.argv[2])
base = status("VmHWM")
limit = (status("VmSize") + headroom) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
t0 = time.perf_counter()
try:
    rgba, record = prepare_image(path)
    ok, error = True, None
except MemoryError as e:
    ok, error, record, rgba = False, f"MemoryError: {e}", {}, None
print(json.dumps({"ok": ok, "error": error, "base_mb": base, "peak_mb": status("VmHWM"),
                  "seconds": round(time.perf_counter() - t0, 2), "record": record,
                  "shape": None if rgba is None else list(rgba.shape)}))
"""


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    return big_flat_png(tmp_path_factory.mktemp("huge") / "huge.png")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for the peak RSS")
def test_prepare_image_of_a_9000px_png_stays_bounded(huge_png):
    assert huge_png.stat().st_size < 400_000  # a small file ...
    res = subprocess.run(
        [sys.executable, "-c", MEASURE, str(huge_png), str(ADDRESS_SPACE_HEADROOM_MB)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"peak RSS {m['base_mb']} MB -> {m['peak_mb']} MB in {m['seconds']} s")
    assert m["ok"], m["error"]  # the old code: MemoryError under the cap (10.7 GB peak without it)
    assert m["peak_mb"] - m["base_mb"] < PEAK_GROWTH_MB, m
    rec = m["record"]
    assert rec["source_size"] == [9000, 9000] and max(rec["working_size"]) <= MAX_WORKING_SIDE
    assert m["shape"] == [64, 64, 4] and rec["matting"] == "colorkey"
    assert abs(rec["coverage"] - 1 / 6) < 0.01  # the box (1/3 x 1/2 of the frame) was found


def test_downscaled_prepare_matches_a_small_copy_of_the_image(tmp_path):
    """The reduced path gives what preparing a pre-shrunk copy gives (same object, same place)."""
    big = big_flat_png(tmp_path / "big.png", size=2400)
    rgba, rec = prepare_image(big, max_side=600)
    assert rec["source_size"] == [2400, 2400] and rec["working_size"] == [600, 600]
    small = np.asarray(Image.open(big).convert("RGB").resize((600, 600), Image.Resampling.BOX))
    ref, ref_rec = prepare_image(small, max_side=600)
    assert "working_size" not in ref_rec
    assert np.abs(rgba.astype(int) - ref.astype(int)).max() <= 1


def test_images_within_the_working_size_are_unchanged(tmp_path):
    """No numerics change below MAX_WORKING_SIDE: the same bytes as a load without the bound."""
    for src in (SAMPLES / "bird_rgba.png", SAMPLES / "anya_rgba.png"):
        a, info = load_image_rgba(src, return_info=True, max_side=MAX_WORKING_SIDE)
        assert info.downscaled_to is None and np.array_equal(a, load_image_rgba(src))
    rgba = np.random.default_rng(0).integers(0, 256, (300, 200, 4), dtype=np.uint8)
    assert downscale_rgba(rgba, 300) is rgba


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "I;16", "I", "F", "1", "CMYK"])
def test_tiled_downscale_equals_downscaling_the_full_load(mode, monkeypatch):
    """Every mode: reducing tile by tile while decoding == loading in full, then reducing."""
    import dd3g_core.synthesis.image_io as image_io

    rng = np.random.default_rng(1)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (300, 500)).astype(np.uint16))
    elif mode == "I":
        img = Image.fromarray(rng.integers(0, 200, (300, 500)).astype(np.int32))
    elif mode == "F":
        img = Image.fromarray(rng.random((300, 500)).astype(np.float32))
    else:
        img = Image.fromarray(rng.integers(0, 256, (300, 500, 4), dtype=np.uint8), "RGBA").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode in ("I;16", "I", "F", "CMYK") else "PNG")
    full, info_full = load_image_rgba(buf.getvalue(), return_info=True, allow_transparent=True)
    monkeypatch.setattr(image_io, "TILE_PIXELS", 64 * 64)  # many tiles
    small, info = load_image_rgba(buf.getvalue(), return_info=True, max_side=120, allow_transparent=True)
    assert small.shape == (60, 100, 4) and info.downscaled_to == (100, 60) and info.full_size == (500, 300)
    assert info.had_alpha == info_full.had_alpha
    assert np.array_equal(small, downscale_rgba(full, 120))


def test_exif_rotated_jpeg_is_reduced_at_decode_and_rotated(tmp_path):
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (400, 800, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    img.save(tmp_path / "r.jpg", exif=exif)
    full = load_image_rgba(tmp_path / "r.jpg")
    small, info = load_image_rgba(tmp_path / "r.jpg", max_side=100, return_info=True)
    assert full.shape == (800, 400, 4) and small.shape == (100, 50, 4)
    assert info.exif_transposed and info.full_size == (400, 800) and info.downscaled_to == (50, 100)
