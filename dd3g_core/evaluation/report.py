"""``metrics.json``, ``report.md`` and the pictures of an evaluation.

Pictures (display resolution, the first ``grid_objects`` held-out objects):

* ``compare_white.png`` / ``compare_black.png``: per object a row ``input | (ground truth | teacher |
  student) at two unseen layout azimuths``; the teacher's OI are upsampled (they exist at its own
  resolution only) and have no alpha, so on black they keep the teacher's background;
* ``sides_white.png`` / ``sides_black.png``: per object the ground truth above the student at 8
  azimuths around it, at elevation 0;
* ``turntable_<seed>.gif``: ground truth and student, on white and on black, at the novel azimuths.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..exports import save_png, views_grid
from ..io import atomic_write_bytes, atomic_write_json

__all__ = ["write_report", "TABLE_COLUMNS", "headline_metrics", "finite_json"]

# (key in a summary, column title, format)
TABLE_COLUMNS = [
    ("agree_seen", "agree seen dB", "{:.2f}"),
    ("agree_unseen", "agree unseen dB", "{:.2f}"),
    ("psnr@{r}", "PSNR@{r}", "{:.2f}"),
    ("ssim@{r}", "SSIM@{r}", "{:.3f}"),
    ("psnr@{d}", "PSNR@{d}", "{:.2f}"),
    ("ssim@{d}", "SSIM@{d}", "{:.3f}"),
    ("lpips@{d}", "LPIPS@{d}", "{:.3f}"),
    ("iou@{d}", "IoU@{d}", "{:.3f}"),
    ("fog_alpha@{d}", "fog α@{d}", "{:.3f}"),
    ("fog_black@{d}", "fog on black@{d}", "{:.3f}"),
    ("outside_alpha@{d}", "outside α@{d}", "{:.3f}"),
    ("diversity", "diversity dB", "{:.2f}"),
]


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return fmt.format(value)


def _resolutions(refs) -> tuple[int, int]:
    rs = sorted(refs.data.novel_premul)
    return rs[0], rs[-1]


def headline_metrics(result: dict, refs) -> dict[str, float]:
    """The main student's numbers that a dashboard plots over time (flat, finite or NaN floats)."""
    r, d = _resolutions(refs)
    methods = result["methods"]
    main = methods[0]
    s = result["summaries"][main.name]
    out = {}
    for key in (
        "agree_seen",
        "agree_unseen",
        f"psnr@{d}",
        f"ssim@{d}",
        f"iou@{d}",
        f"fog_alpha@{d}",
        f"fog_black@{d}",
        f"outside_alpha@{d}",
        f"psnr@{r}",
        "diversity",
        f"lpips@{d}",
    ):
        if key in s:
            out[key.replace("@", "_")] = float(s[key])
    copy = result["summaries"].get("copy-input", {})
    if "agree_unseen" in copy and "agree_unseen" in s:
        out["agree_unseen_minus_copy_input"] = float(s["agree_unseen"] - copy["agree_unseen"])
    if "fit ceiling" in result["summaries"] and result.get("on_fit_subset"):
        ceiling = result["summaries"]["fit ceiling"].get(f"psnr@{d}", math.nan)
        out[f"psnr_{d}_minus_fit_ceiling"] = float(result["on_fit_subset"][main.name][f"psnr@{d}"] - ceiling)
    for k in ("opacity_median", "transparent_share", "scale_px_median"):
        if k in main.stats:
            out[k] = float(main.stats[k])
    for k in ("student_ms", "speedup"):
        if k in main.info:
            out[k] = float(main.info[k])
    return out


def _table(result: dict, refs) -> str:
    r, d = _resolutions(refs)
    cols = [(k.format(r=r, d=d), t.format(r=r, d=d), f) for k, t, f in TABLE_COLUMNS]
    head = ["method", *(t for _, t, _ in cols), "ms/image", "parameters"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in result["methods"]:
        s = result["summaries"][m.name]
        ms = m.info.get("student_ms", m.info.get("ms"))
        params = m.info.get("parameters")
        row = [m.name, *(_fmt(s.get(k), f) for k, _, f in cols), _fmt(ms, "{:.1f}"), f"{params:,}" if params else "—"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _delta_table(result: dict, refs) -> str:
    """Every other student (e.g. an ablation) minus the first row, on the table's columns."""
    r, d = _resolutions(refs)
    students = [m for m in result["methods"] if m.kind == "student"]
    if len(students) < 2:
        return ""
    cols = [(k.format(r=r, d=d), t.format(r=r, d=d), f) for k, t, f in TABLE_COLUMNS]
    base = result["summaries"][students[0].name]
    head = ["method minus " + students[0].name, *(t for _, t, _ in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in students[1:]:
        s = result["summaries"][m.name]
        row = [m.name]
        for k, _, f in cols:
            a, b = s.get(k), base.get(k)
            row.append("—" if a is None or b is None or math.isnan(a - b) else ("{:+" + f[2:]).format(a - b))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _stats_table(result: dict) -> str:
    keys = [
        ("opacity_median", "{:.3f}"),
        ("transparent_share", "{:.1%}"),
        ("white_fog_share", "{:.1%}"),
        ("scale_px_median", "{:.2f}"),
        ("scale_px_median_display", "{:.2f}"),
        ("subpixel_share", "{:.1%}"),
    ]
    head = [
        "method",
        "median opacity",
        "opacity < 0.05",
        "faint near-white",
        "largest σ (px @R)",
        "largest σ (px @display)",
        "σ < ½ px",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    hist = []
    for m in result["methods"]:
        if m.stats.get("count"):
            lines.append("| " + " | ".join([m.name, *(_fmt(m.stats.get(k), f) for k, f in keys)]) + " |")
            bins = " ".join(f"{100 * h:.0f}" for h in m.stats.get("opacity_histogram", []))
            hist.append(f"- {m.name}: {bins}")
    if hist:
        lines += ["", "Opacity histogram, % of Gaussians per bin of 0.1 from 0 to 1:", "", *hist]
    return "\n".join(lines)


def _on(premul: Tensor, alpha: Tensor, bg) -> Tensor:  # [..., 3, H, W] -> composited
    return (premul + torch.tensor(bg, dtype=torch.float32).reshape(3, 1, 1) * (1 - alpha)).clamp(0, 1)


def _hwc(x: Tensor) -> np.ndarray:
    return np.clip(np.rint(x.permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)


def _up(x: Tensor, size: int) -> Tensor:  # [3, h, w] -> [3, size, size]
    if x.shape[-1] == size:
        return x
    return F.interpolate(x[None], size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def _pictures(result: dict, refs, teacher_azimuths, out: Path) -> list[str]:
    main = result["methods"][0]
    if "premul" not in main.gallery:
        return []
    _, d = _resolutions(refs)
    k = main.gallery["premul"].shape[0]
    novel = refs.data.novel
    el0 = novel.elevations_deg == novel.elevations_deg.min()
    az = novel.azimuths_deg
    names = []
    unseen = list(teacher_azimuths[1:3])
    for bg_name, bg in (("white", (1.0, 1.0, 1.0)), ("black", (0.0, 0.0, 0.0))):
        tiles, sides = [], []
        for i in range(k):
            gt_p = refs.data.novel_premul[d][i].float() / 255
            gt_a = refs.data.novel_alpha[d][i].float() / 255
            st_p, st_a = main.gallery["premul"][i], main.gallery["alpha"][i]
            rgba = refs.data.inputs[i].float() / 255
            row = [_up(_on(rgba[:3] * rgba[3:], rgba[3:], bg), d)]
            for a in unseen:
                j = int(((az - a).remainder(360) < 1e-3).logical_and(el0).nonzero()[0, 0])
                v = list(teacher_azimuths).index(a)
                row += [_on(gt_p[j], gt_a[j], bg), _up(refs.oi(0, slice(i, i + 1))[0, v], d), _on(st_p[j], st_a[j], bg)]
            tiles += row
            ring = el0.nonzero().flatten()
            ring = ring[:: max(1, len(ring) // 8)][:8]
            sides += [_on(gt_p[j], gt_a[j], bg) for j in ring.tolist()]
            sides += [_on(st_p[j], st_a[j], bg) for j in ring.tolist()]
        save_png(
            views_grid(np.stack([_hwc(t) for t in tiles]), ncols=1 + 3 * len(unseen), pad=2, pad_value=128),
            out / f"compare_{bg_name}.png",
        )
        save_png(
            views_grid(np.stack([_hwc(t) for t in sides]), ncols=len(sides) // (2 * k), pad=2, pad_value=128),
            out / f"sides_{bg_name}.png",
        )
        names += [f"compare_{bg_name}.png", f"sides_{bg_name}.png"]
    import imageio.v2 as imageio

    ring = el0.nonzero().flatten().tolist()
    for i in range(min(k, 2)):
        gt_p = refs.data.novel_premul[d][i].float() / 255
        gt_a = refs.data.novel_alpha[d][i].float() / 255
        st_p, st_a = main.gallery["premul"][i], main.gallery["alpha"][i]
        frames = []
        for j in ring:
            panels = [
                _on(gt_p[j], gt_a[j], (1, 1, 1)),
                _on(st_p[j], st_a[j], (1, 1, 1)),
                _on(gt_p[j], gt_a[j], (0, 0, 0)),
                _on(st_p[j], st_a[j], (0, 0, 0)),
            ]
            frames.append(views_grid(np.stack([_hwc(p) for p in panels]), pad=2, pad_value=128))
        name = f"turntable_{refs.data.seeds[i]}.gif"
        buf = io.BytesIO()
        imageio.mimwrite(buf, frames, format="GIF", duration=1000.0 / 8, loop=0)
        atomic_write_bytes(out / name, buf.getvalue())
        names.append(name)
    return names


def write_report(result: dict, refs, settings, teacher, out_dir: str | Path, header: dict) -> dict:
    """Write ``metrics.json``, ``report.md`` and the pictures into ``out_dir``; returns the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r, d = _resolutions(refs)
    images = _pictures(result, refs, list(teacher.layout.azimuths_deg), out)
    main = result["methods"][0]
    metrics = {
        "header": header,
        "resolutions": {"teacher": r, "display": d},
        "headline": headline_metrics(result, refs),
        "summaries": result["summaries"],
        "on_fit_subset": result["on_fit_subset"],
        "gaussian_statistics": {m.name: m.stats for m in result["methods"] if m.stats},
        "info": {m.name: m.info for m in result["methods"]},
        "per_object": {
            m.name: {"seeds": m.seeds, **{k: v.tolist() for k, v in m.per_object.items()}} for m in result["methods"]
        },
        "references": {k: v for k, v in refs.meta.items() if k not in ("seeds",)},
        "images": images,
        "deltas": {
            m.name: {
                k: result["summaries"][m.name][k] - result["summaries"][main.name].get(k, math.nan)
                for k in result["summaries"][m.name]
                if isinstance(result["summaries"][m.name][k], float)
            }
            for m in result["methods"][1:]
            if m.kind == "student"
        },
    }
    atomic_write_json(out / "metrics.json", finite_json(metrics))
    lines = [
        f"# Evaluation of {main.name}",
        "",
        *(f"- **{k}**: {v}" for k, v in header.items()),
        f"- held-out objects: {len(refs.data)} x {refs.draws} noise draws; novel cameras: "
        f"{refs.data.novel.num_views} ({settings.novel_azimuths} azimuths x elevations "
        f"{list(settings.novel_elevations)}), scored at {r} px (the teacher's) and {d} px (display)",
        "",
        "## Methods and references",
        "",
        _table(result, refs),
        "",
        "agree: PSNR at the teacher's cameras against its OI from the same N (seen = the input's view). "
        "PSNR/SSIM/LPIPS/IoU: novel cameras against ground truth on the teacher's background. outside α: mean "
        f"alpha in a band of {settings.fog_band:.0%} of the image side around the object where the ground truth is "
        "empty (a silhouette error counts as much as haze). fog: the same band without the pixels within one "
        "teacher pixel of the render's own solid part (alpha >= 0.5): haze, as alpha and as brightness on black. "
        "diversity: PSNR between two noise draws (lower = more diverse). "
        f"Teacher row: {result['methods'][-2].info.get('note', '')}.",
        "",
    ]
    deltas = _delta_table(result, refs)
    if deltas:
        lines += [
            "## Ablations: difference to the full method",
            "",
            deltas,
            "",
            "Higher is better for every column but LPIPS, fog and diversity (lower = more diverse).",
            "",
        ]
    if result.get("on_fit_subset"):
        fit = result["summaries"].get("fit ceiling", {})
        lines += ["## Against the per-sample fit ceiling", ""]
        for name, s in result["on_fit_subset"].items():
            lines.append(
                f"- {name} on the {s['objects']} fitted objects: PSNR@{d} {_fmt(s.get(f'psnr@{d}'), '{:.2f}')} dB "
                f"vs ceiling {_fmt(fit.get(f'psnr@{d}'), '{:.2f}')} dB; agree unseen "
                f"{_fmt(s.get('agree_unseen'), '{:.2f}')} vs {_fmt(fit.get('agree_unseen'), '{:.2f}')} dB"
            )
        lines.append("")
    lines += ["## Gaussians", "", _stats_table(result), ""]
    bad = {
        m.name: result["summaries"][m.name]["nonfinite"]
        for m in result["methods"]
        if "nonfinite" in result["summaries"][m.name]
    }
    if bad:
        lines += ["## Non-finite scores (per object, excluded from the means above)", ""]
        lines += [f"- {name}: {v}" for name, v in bad.items()] + [""]
    if images:
        lines += [
            "## Pictures",
            "",
            f"compare_*: per object, input | ground truth | teacher (upsampled from {r} px) | "
            f"student, at two of the teacher's unseen azimuths, {d} px. sides_*: ground truth above the student "
            "at 8 azimuths. turntable_*: ground truth | student on white, then on black.",
            "",
        ]
        lines += [f"![{n}]({n})" for n in images] + [""]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
    return metrics


def finite_json(obj):
    """NaN/inf are not JSON: written as null (the per-object lists keep their positions)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj
