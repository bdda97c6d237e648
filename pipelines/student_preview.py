"""The ``pepd_student`` pictures in the Dagster UI (see :mod:`pipelines.preview` for how a picture becomes
metadata): :func:`student_views`, the student's renders at display resolution from several sides of the first
held-out objects, on white and on black; the loss curve as a plot (:func:`loss_curve_image`) and as an
inline sparkline (:func:`loss_sparkline_markdown`); :func:`student_ui_metadata`, all of it plus the final
losses as numbers.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .preview import (
    BLACK,
    INLINE_MARKDOWN_CHARS,
    WHITE,
    _png_markdown,
    fit_tile,
    image_markdown,
    on_background,
    tile_grid,
)

__all__ = [
    "STUDENT_AZIMUTHS",
    "student_views",
    "loss_curve_image",
    "loss_sparkline_markdown",
    "student_ui_metadata",
]

STUDENT_AZIMUTHS = (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)  # relative to the input view
STUDENT_ELEVATION = 15.0  # degrees above the teacher's layout: the top of the object shows too


def student_views(
    pepd_dir: str | Path,
    teacher,
    num_objects: int = 2,
    azimuths: Sequence[float] = STUDENT_AZIMUTHS,
    elevation: float = STUDENT_ELEVATION,
    display_scale: int = 4,
    max_resolution: int = 256,
    device: str | None = None,  # the student's; None: the teacher's
) -> tuple[np.ndarray, dict[str, Any]]:
    """The student's renders of the first ``num_objects`` held-out objects (the evaluation's, noise draw 0)
    at ``display_scale`` x the teacher's resolution (at most ``max_resolution``): per object a row on white
    and a row on black, each the input image then ``azimuths`` (degrees from the input view) at ``elevation``
    above the teacher's layout. Tiny (32 px teacher): 128 px tiles, 4 rows x 7 columns, 908 x 518 px.
    Returns the image and what it shows."""
    from dd3g_core.evaluation.heldout import heldout_noise, layout_name
    from dd3g_core.generate import Generator
    from dd3g_core.model import PEPD
    from dd3g_core.render.views import orbit_views, to_uint8
    from dd3g_core.teacher.training.data import RenderSpec, render_example
    from dd3g_core.world import split_seeds

    layout = teacher.layout
    res = min(layout.resolution * display_scale, max_resolution)
    generator = Generator(PEPD.from_pretrained(pepd_dir, device=device or str(teacher.device)), teacher)
    seeds = [int(s) for s in split_seeds("heldout", num_objects)]
    spec = RenderSpec(
        layout=layout_name(layout), background=tuple(teacher.background), input_resolution=max(64, layout.resolution)
    )
    noise = heldout_noise(teacher, seeds, 0)
    az = [float(layout.azimuths_deg[0]) + float(a) for a in azimuths]
    el = float(layout.elevation_deg) + float(elevation)
    rows = []
    for i, seed in enumerate(seeds):
        rgba = np.ascontiguousarray(render_example(seed, spec)[0].transpose(1, 2, 0))  # [S, S, 4]
        g = generator(rgba, noise[i : i + 1].to(teacher.device))
        premul, alpha = orbit_views(g, az, el, layout.radius, layout.fov_deg, res)  # on black, alpha
        for color in (WHITE, BLACK):
            bg = np.asarray(color, np.float32) / 255.0
            renders = to_uint8(premul.numpy() + bg * (1.0 - alpha.numpy()))
            rows.append([on_background(fit_tile(rgba, res), color), *renders])
    info = {
        "heldout_seeds": seeds,
        "resolution": res,
        "azimuths_deg": [float(a) for a in azimuths],
        "elevation_deg": el,
    }
    return tile_grid(rows), info


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / max(1, ticks)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def loss_curve_image(
    curve: Sequence[Sequence[float]], width: int = 640, height: int = 320, title: str = "training loss (total)"
) -> np.ndarray:  # uint8 [height, width, 3]
    """A line plot of ``[[step, loss], ...]`` (the trainer's ``loss_curve``): log-scale loss axis when the
    losses are positive and span more than a factor 10, grid lines, the last value in the title."""
    pts = [(float(s), float(v)) for s, v in curve if math.isfinite(float(v))]
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(11)
    left, right, top, bottom = 64, 16, 28, 36
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    if not pts:
        draw.text((left, height // 2), "no finite loss values logged", fill=BLACK, font=font)
        return np.asarray(img)
    steps, values = [p[0] for p in pts], [p[1] for p in pts]
    log = min(values) > 0 and max(values) / min(values) > 10
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo, hi = f(min(values)), f(max(values))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    smin, smax = min(0.0, min(steps)), max(steps)
    smax = smax if smax > smin else smin + 1

    def px(s: float, v: float) -> tuple[float, float]:
        return x0 + (s - smin) / (smax - smin) * (x1 - x0), y1 - (f(v) - lo) / (hi - lo) * (y1 - y0)

    grid, axis = (225, 225, 225), (90, 90, 90)
    if log:
        decades = range(math.floor(lo), math.ceil(hi) + 1)
        yticks = [m * 10.0**e for e in decades for m in (1, 2, 5) if lo <= math.log10(m * 10.0**e) <= hi]
        if len(yticks) > 8:  # many decades: the powers of ten only
            yticks = [10.0**e for e in decades if lo <= e <= hi]
    else:
        step = _nice_step(hi - lo)
        yticks = [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
    for v in yticks:
        y = px(smin, v)[1]
        draw.line([(x0, y), (x1, y)], fill=grid)
        draw.text((x0 - 6, y), f"{v:.3g}", fill=axis, font=small, anchor="rm")
    sstep = _nice_step(smax - smin)
    for k in range(math.ceil(smin / sstep), math.floor(smax / sstep) + 1):
        x = px(k * sstep, values[0])[0]
        draw.line([(x, y0), (x, y1)], fill=grid)
        draw.text((x, y1 + 6), f"{k * sstep:g}", fill=axis, font=small, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline=axis)
    line = [px(s, v) for s, v in pts]
    if len(line) > 1:
        draw.line(line, fill=(31, 119, 180), width=2, joint="curve")
    for x, y in line[-1:] if len(line) > 1 else line:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(31, 119, 180))
    scale = ", log scale" if log else ""
    draw.text((left, 6), f"{title}{scale}: {values[-1]:.5g} at step {steps[-1]:g}", fill=BLACK, font=font)
    draw.text(((x0 + x1) / 2, height - 4), "step", fill=axis, font=small, anchor="mb")
    return np.asarray(img)


def loss_sparkline_markdown(curve: Sequence[Sequence[float]], width: int = 240, height: int = 40) -> str | None:
    """The loss curve as a 1-bit sparkline PNG small enough (markdown < :data:`INLINE_MARKDOWN_CHARS`) for the
    UI to show it inline in the metadata table, without a click; ``None`` when it does not fit."""
    values = [float(v) for _, v in curve if math.isfinite(float(v))]
    if len(values) < 2:
        return None
    log = min(values) > 0 and max(values) / min(values) > 10
    ys = [math.log10(v) for v in values] if log else values
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0
    n = len(ys)
    pts = [(i * (width - 1) / (n - 1), (height - 2) - (y - lo) / span * (height - 3)) for i, y in enumerate(ys)]
    while width >= 60:
        img = Image.new("1", (width, height), 1)
        ImageDraw.Draw(img).line([(x * width / 240, y) for x, y in pts], fill=0, width=1)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        md = _png_markdown(buf.getvalue(), "loss")
        if len(md) < INLINE_MARKDOWN_CHARS:
            return md
        width = int(width * 0.75)
    return None


# -- pepd_student's materialization -----------------------------------------------------------------------


def _raw(value: Any) -> Any:
    """A metadata entry's plain value (a MetadataValue's ``value``, or the value itself)."""
    return value.value if isinstance(value, dg.MetadataValue) else value


def student_ui_metadata(settings, teacher: dict, trained, log: Callable | Any = None) -> dict[str, Any]:
    """What ``pepd_student`` adds to the trainer's report for the UI: ``final_loss`` / ``final_rgb_mse`` as
    floats (plotted across materializations), ``loss_curve_plot`` and ``student_views`` (inline pictures).
    A preview that cannot be made is logged and named in ``preview_error``, never failing the asset."""
    meta: dict[str, Any] = {}
    for key in ("final_loss", "final_rgb_mse"):
        v = _raw(trained.metadata.get(key))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            meta[key] = dg.MetadataValue.float(float(v))
    curve = _raw(trained.metadata.get("loss_curve")) or []
    meta["loss_curve_plot"] = image_markdown(
        loss_curve_image(curve), "loss curve", f"{len(curve)} logged steps (raw pairs: `loss_curve`)"
    )
    sparkline = loss_sparkline_markdown(curve)
    if sparkline is not None:
        meta["loss_sparkline"] = dg.MetadataValue.md(sparkline)
    warn = getattr(log, "warning", None) or (lambda m: None)
    try:
        from dd3g_core.teacher import load_teacher

        t0 = time.perf_counter()
        model = load_teacher(
            teacher["path"],
            device=settings.profile_config().teacher.device,
            content_hash=teacher["content_hash"],
            hash_cache=settings.hash_cache(),
        )
        image, info = student_views(trained.record["path"], model)
        caption = (
            f"held-out objects {', '.join(map(str, info['heldout_seeds']))} (the evaluation's, noise draw 0) at "
            f"{info['resolution']} px: per object a row on white then on black, each the input image then the student "
            f"at azimuths {', '.join(f'{a:g}°' for a in info['azimuths_deg'])} from the input view, elevation "
            f"{info['elevation_deg']:g}° ({time.perf_counter() - t0:.1f} s). Look for one solid object that matches "
            "the input from the front and stays plausible from the sides, without haze on black"
        )
        meta["student_views"] = image_markdown(image, "student views", caption)
    except Exception as e:  # noqa: BLE001 - a picture must not fail a trained student
        warn(f"student_views preview not made: {type(e).__name__}: {e}")
        meta["preview_error"] = f"{type(e).__name__}: {e}"
    return meta
