"""load_image_rgba: every odd input is either normalised to uint8 RGBA or a clear ValueError."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dd3g_core.synthesis import ImageLoadError, load_image_rgba


def encode(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgba_image():
    arr = np.zeros((20, 24, 4), np.uint8)
    arr[4:16, 6:18] = (200, 100, 50, 255)
    arr[3, 6:18] = (200, 100, 50, 128)
    return arr


def test_rgba_round_trip_from_bytes_and_path(tmp_path):
    arr = rgba_image()
    data = encode(Image.fromarray(arr))
    out, info = load_image_rgba(data, return_info=True)
    assert out.dtype == np.uint8 and out.shape == (20, 24, 4) and np.array_equal(out, arr)
    assert info.had_alpha and info.mode == "RGBA" and info.size == (24, 20) and info.format == "PNG"
    p = tmp_path / "a.png"
    p.write_bytes(data)
    assert np.array_equal(load_image_rgba(p), arr) and np.array_equal(load_image_rgba(str(p)), arr)


def test_rgb_without_alpha_is_opaque_and_flagged():
    rgb = rgba_image()[..., :3]
    out, info = load_image_rgba(encode(Image.fromarray(rgb)), return_info=True)
    assert (out[..., 3] == 255).all() and np.array_equal(out[..., :3], rgb) and info.had_alpha is False
    jpeg, info = load_image_rgba(encode(Image.fromarray(rgb), "JPEG"), return_info=True)
    assert jpeg.shape == (20, 24, 4) and info.had_alpha is False


@pytest.mark.parametrize("mode", ["L", "LA", "1", "P", "CMYK", "I;16", "I", "F"])
def test_odd_modes_become_uint8_rgba(mode):
    base = Image.fromarray(rgba_image())
    if mode in ("P", "PA"):
        img = base.convert("RGB").convert("P")
    elif mode == "I;16":
        img = Image.fromarray((np.linspace(0, 65535, 20 * 24).reshape(20, 24)).astype(np.uint16))
    elif mode == "I":
        img = Image.fromarray((np.linspace(0, 65535, 20 * 24).reshape(20, 24)).astype(np.int32))
    elif mode == "F":
        img = Image.fromarray(np.linspace(0, 1, 20 * 24, dtype=np.float32).reshape(20, 24))
    else:
        img = base.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    data = encode(img, fmt)
    out, info = load_image_rgba(data, return_info=True)
    assert out.dtype == np.uint8 and out.shape == (20, 24, 4), (mode, out.dtype, out.shape)
    if mode in ("I;16", "I", "F"):  # 16-bit / float gray is scaled to 8 bits, not clipped
        assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and 100 < out[10, 12, 0] < 156
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 3] == 255).all()
    if mode == "LA":
        assert info.had_alpha and out[0, 0, 3] == 0 and out[10, 10, 3] == 255
    if mode == "CMYK":
        assert not info.had_alpha and (out[..., 3] == 255).all()


def test_palette_with_transparency_keeps_alpha():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (2, 2, 6, 6))
    img.info["transparency"] = 0
    out, info = load_image_rgba(encode(img, transparency=0), return_info=True)
    assert info.had_alpha and out[0, 0, 3] == 0 and tuple(out[3, 3]) == (255, 0, 0, 255)


def test_sixteen_bit_rgba_png_is_read():
    # a 16-bit RGBA PNG written by hand (PIL cannot write one)
    h, w = 4, 5
    px = np.zeros((h, w, 4), ">u2")
    px[..., 0], px[..., 3] = 65535, 65535
    raw = b"".join(b"\x00" + px[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    out = load_image_rgba(png)
    assert out.shape == (4, 5, 4) and (out[..., 0] == 255).all() and (out[..., 3] == 255).all()


def test_truncated_and_corrupt_data_are_clear_errors():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)))
    with pytest.raises(ImageLoadError, match="truncated") as e:
        load_image_rgba(data[: len(data) // 2])
    assert e.value.reason == "corrupt" and isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="not a recognised image") as e:
        load_image_rgba(b"this is not an image at all")
    assert e.value.reason == "unrecognised"
    with pytest.raises(ValueError, match="empty"):
        load_image_rgba(b"")
    broken = bytearray(data)
    broken[60:80] = b"\x00" * 20  # damage the compressed stream
    with pytest.raises(ImageLoadError):
        load_image_rgba(bytes(broken))


def test_all_transparent_is_an_error_unless_allowed():
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., :3] = 77  # hidden colour under zero alpha
    data = encode(Image.fromarray(arr))
    with pytest.raises(ValueError, match="transparent") as e:
        load_image_rgba(data)
    assert e.value.reason == "all_transparent"
    out = load_image_rgba(data, allow_transparent=True)
    assert (out == 0).all()


def _png_with_declared_size(w: int, h: int) -> bytes:
    """A tiny valid 8x8 PNG whose IHDR is rewritten to declare w x h (CRC fixed)."""
    data = bytearray(encode(Image.new("RGBA", (8, 8), (1, 2, 3, 255))))
    ihdr = bytearray(data[12:29])  # tag + 13 bytes
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def test_decompression_bombs_are_refused_before_decoding(monkeypatch):
    with pytest.raises(ValueError, match="decompression bomb") as e:
        load_image_rgba(_png_with_declared_size(60000, 60000))
    assert e.value.reason == "decompression_bomb"
    # PIL's own limit is honoured (a lower MAX_IMAGE_PIXELS refuses an ordinary image) ...
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    ok = encode(Image.fromarray(rgba_image()))  # 480 px: fine
    assert load_image_rgba(ok).shape == (20, 24, 4)
    big = encode(Image.new("RGBA", (40, 40), (9, 9, 9, 255)))  # 1600 px > 1000
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image_rgba(big)
    # ... and an explicit max_pixels wins
    assert load_image_rgba(big, max_pixels=2000).shape == (40, 40, 4)


def test_missing_file_and_first_frame_of_animations(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image_rgba(tmp_path / "missing.png")
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out, info = load_image_rgba(buf.getvalue(), return_info=True)
    assert info.frames == 2 and tuple(out[0, 0, :3]) == (255, 0, 0)
