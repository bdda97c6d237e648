"""Pictures in the Dagster UI: there is no image metadata type, so a picture is a base64 PNG inside a
markdown metadata value (``![title](data:image/png;base64,...)``). Dagster 1.13's metadata table shows a
markdown entry inline only when it is shorter than :data:`INLINE_MARKDOWN_CHARS` (1000 characters); a
longer one, every real picture, is a ``[Show Markdown]`` link that opens it at its own size (one click:
asset page > Overview > Metadata, or the Events tab). Only the loss sparkline is small enough to be inline.

Metadata lives in the event log, so every picture is kept under :data:`MAX_PREVIEW_BYTES` (a PNG over
it is quantised to 256 colours, then halved until it fits). Small images are upscaled nearest-neighbour
to :data:`TILE` px so a person can judge them; alpha is shown on white and on black (or a checkerboard).

* :func:`rgba_preview` (``rgba_images``, per partition): samples on white above the same on black;
* :func:`trajectories_preview` (``teacher_trajectories``, per partition): per sample its input image (on a
  checkerboard) then the teacher's views OI;
* :mod:`pipelines.student_preview` (``pepd_student``): the student's renders and its loss curve;
* :func:`png_file_markdown`: a PNG file already written (the evaluation's pictures).
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import numpy as np
from PIL import Image

__all__ = [
    "INLINE_MARKDOWN_CHARS",
    "MAX_PREVIEW_BYTES",
    "TILE",
    "png_bytes",
    "image_markdown",
    "png_file_markdown",
    "inline_images",
    "fit_tile",
    "on_background",
    "checkerboard",
    "tile_grid",
    "rgba_preview",
    "rgba_preview_markdown",
    "trajectories_preview",
    "trajectories_preview_markdown",
]

MAX_PREVIEW_BYTES = 200_000  # per picture: metadata is stored in the event log
INLINE_MARKDOWN_CHARS = 1000  # the UI shows a markdown entry inline only below this; longer: "[Show Markdown]"
TILE = 128  # px per image in a grid: small images are upscaled nearest-neighbour to it, large ones reduced
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
_DATA_URI = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


# -- encoding -------------------------------------------------------------------------------------------


def png_bytes(image: np.ndarray | Image.Image, max_bytes: int = MAX_PREVIEW_BYTES) -> bytes:
    """PNG of ``image`` (uint8 [H, W, 3|4]) within ``max_bytes``: as is, else quantised to 256 colours,
    else also halved in size until it fits."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))

    def encode(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    data = encode(img)
    if len(data) <= max_bytes:
        return data
    method = Image.Quantize.FASTOCTREE if img.mode == "RGBA" else Image.Quantize.MEDIANCUT
    while True:
        data = encode(img.quantize(256, method=method))
        if len(data) <= max_bytes or min(img.size) < 32:
            return data
        img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)


def _png_markdown(png: bytes, title: str, caption: str = "") -> str:
    md = f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"
    return md + (f"\n\n{caption}" if caption else "")


def image_markdown(
    image: np.ndarray, title: str = "preview", caption: str = "", max_bytes: int = MAX_PREVIEW_BYTES
) -> dg.MetadataValue:
    """A base64 PNG (within ``max_bytes``) inside a markdown metadata value, ``caption`` below it."""
    return dg.MetadataValue.md(_png_markdown(png_bytes(image, max_bytes), title, caption))


def png_file_markdown(path: str | Path, title: str, max_bytes: int = MAX_PREVIEW_BYTES) -> str:
    """Markdown showing a PNG file inline: its bytes as they are when within ``max_bytes``, else re-encoded."""
    data = Path(path).read_bytes()
    if len(data) > max_bytes:
        with Image.open(io.BytesIO(data)) as im:
            data = png_bytes(im.convert("RGBA" if "A" in im.getbands() else "RGB"), max_bytes)
    return _png_markdown(data, title)


def inline_images(markdown: str) -> list[tuple[str, Image.Image]]:
    """The (title, image) of every inline PNG in a markdown text (what the UI shows; for tests and tools)."""
    out = []
    for title, b64 in _DATA_URI.findall(markdown):
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        im.load()
        out.append((title, im))
    return out


# -- tiles and grids ------------------------------------------------------------------------------------


def fit_tile(image: np.ndarray, size: int = TILE) -> np.ndarray:
    """A square uint8 image at ``size`` px: nearest-neighbour when enlarging (pixels stay visible), box
    filtered when reducing."""
    image = np.asarray(image, dtype=np.uint8)
    if image.shape[0] == size and image.shape[1] == size:
        return image
    resample = Image.Resampling.NEAREST if max(image.shape[:2]) <= size else Image.Resampling.BOX
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


def checkerboard(height: int, width: int, cell: int = 8) -> np.ndarray:  # uint8 [H, W, 3]
    yy, xx = np.mgrid[:height, :width]
    light = ((yy // cell + xx // cell) % 2 == 0)[..., None]
    return np.where(light, 255, 204).astype(np.uint8).repeat(3, axis=-1)


def on_background(rgba: np.ndarray, background: tuple[int, int, int] | str) -> np.ndarray:
    """A straight-alpha uint8 RGBA image composited on a colour (0..255) or ``"checker"``."""
    rgba = np.asarray(rgba, dtype=np.uint8)
    a = rgba[..., 3:].astype(np.float32) / 255.0
    if isinstance(background, str):
        bg = checkerboard(*rgba.shape[:2], cell=max(2, rgba.shape[0] // 8)).astype(np.float32)
    else:
        bg = np.asarray(background, np.float32).reshape(1, 1, 3)
    return np.clip(np.rint(rgba[..., :3] * a + bg * (1.0 - a)), 0, 255).astype(np.uint8)


def tile_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, pad_value: int = 128) -> np.ndarray:
    """Rows of equally sized RGB tiles as one image, ``pad`` px of grey between them."""
    from dd3g_core.exports import views_grid

    ncols = max(len(r) for r in rows)
    h, w = rows[0][0].shape[:2]
    blank = np.full((h, w, 3), pad_value, np.uint8)
    tiles = [t for r in rows for t in (*r, *[blank] * (ncols - len(r)))]
    return views_grid(np.stack(tiles), ncols=ncols, pad=pad, pad_value=pad_value)


# -- stage previews -------------------------------------------------------------------------------------


def rgba_preview(directory: str | Path, count: int = 8, per_row: int = 4, tile: int = TILE) -> np.ndarray:
    """The first ``count`` images of a shard set: each group of ``per_row`` on white, then on black.
    ``count`` = 8, 128 px: 4 x 4 tiles, 518 x 518 px."""
    from dd3g_core.shards import iter_samples

    images = []
    for sample in iter_samples(directory, validate=False):
        images.append(fit_tile(sample["rgba.png"], tile))
        if len(images) == count:
            break
    if not images:
        return tile_grid([[np.full((tile, tile, 3), 128, np.uint8)]])
    rows = []
    for start in range(0, len(images), per_row):
        group = images[start : start + per_row]
        rows += [[on_background(im, WHITE) for im in group], [on_background(im, BLACK) for im in group]]
    return tile_grid(rows)


def rgba_preview_markdown(directory: str | Path, partition: str, count: int = 8) -> dg.MetadataValue:
    """``rgba_images``' ``preview`` entry of one partition: :func:`rgba_preview` with a caption."""
    from dd3g_core.shards import read_manifest

    res = (read_manifest(directory).get("config") or {}).get("resolution", "?")
    caption = (
        f"partition {partition}: its first {count} images ({res} px, shown at {TILE} px), each row of 4 on white "
        "then on black: look for clean silhouettes, no colour-key fringe, objects centred and whole"
    )
    return image_markdown(rgba_preview(directory, count), f"rgba_images {partition}", caption)


def trajectories_preview(
    directory: str | Path, count: int = 4, tile: int = TILE, scan: int = 64
) -> tuple[np.ndarray, list[str]]:
    """Per sample a row: the input image II on a checkerboard, then the teacher's decoded views OI
    (``views.npy``). The first ``count`` samples of a trajectory shard set with distinct input images among
    its first ``scan`` (then other noise draws of them). Returns the image and the rows' sample keys.
    Tiny teacher (4 views of 32 px), 128 px tiles: 4 rows x 5 columns, 648 x 518 px."""
    from dd3g_core.shards import iter_samples
    from dd3g_core.trajectories.sample import INPUT, VIEWS

    def row(sample) -> list[np.ndarray]:
        views = np.asarray(sample[VIEWS], dtype=np.float32)  # [V, 3, R, R] in 0..1
        views = np.clip(np.rint(views.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)
        return [on_background(fit_tile(sample[INPUT], tile), "checker"), *(fit_tile(v, tile) for v in views)]

    chosen, others, seen = [], [], set()
    for i, sample in enumerate(iter_samples(directory, validate=False)):
        key, image = str(sample.get("__key__", i)), np.asarray(sample[INPUT])
        digest = hash(image.tobytes())
        (others if digest in seen else chosen).append((key, row(sample) if digest not in seen else sample))
        seen.add(digest)
        if len(chosen) == count or i + 1 >= scan:
            break
    chosen += [(key, row(sample)) for key, sample in others[: count - len(chosen)]]
    if not chosen:
        return tile_grid([[np.full((tile, tile, 3), 128, np.uint8)]]), []
    return tile_grid([r for _, r in chosen]), [key for key, _ in chosen]


def trajectories_preview_markdown(directory: str | Path, partition: str, count: int = 4) -> dg.MetadataValue:
    """``teacher_trajectories``' ``preview`` entry of one partition: :func:`trajectories_preview` with a caption."""
    image, keys = trajectories_preview(directory, count)
    caption = (
        f"partition {partition}, samples {', '.join(keys) or '(none)'}: per row the input image (on a checkerboard) "
        f"then the teacher's views OI (shown at {TILE} px): what the student learns to reproduce; look for views "
        "that agree with the input and with each other"
    )
    return image_markdown(image, f"teacher_trajectories {partition}", caption)
