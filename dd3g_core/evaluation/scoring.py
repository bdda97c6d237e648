"""Scores of one method on the references: a student, the fit ceiling, the teacher, copy-input.

Every score is kept per object (``MethodScores.per_object[name]``: ``[B]``), so a non-finite
render is reported with its object's seed (:func:`summarize`) instead of being averaged away.

Names (``@r``: at resolution r; the teacher's R and the display resolution):

* ``agree_seen`` / ``agree_unseen`` (+ ``_ssim``): PSNR of the renders at the teacher's cameras C
  against the teacher's OI from the same N (seen = view 0, the input's view), averaged over draws;
* ``gt_seen`` / ``gt_unseen``: the same renders against ground truth at C;
* ``psnr@r``, ``ssim@r``, ``lpips@r`` (display only, when local weights exist), ``iou@r``,
  ``fog_alpha@r``, ``fog_black@r`` (haze: away from the render's own solid part), ``outside_alpha@r``,
  ``outside_black@r`` (the whole band outside the ground truth, silhouette errors included): at the
  novel cameras against ground truth, draw 0 (``metrics.fog``);
  ``psnr@r_el<e>``: the novel cameras at elevation e only;
* ``diversity``: PSNR between the renders at C of draws 0 and 1 (lower = more diverse).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..gaussians import Gaussians
from ..progress import Progress
from .gaussian_stats import gaussian_statistics
from .heldout import heldout_noise
from .metrics import fog, foreground_iou, psnr, ssim
from .references import GAUSSIAN_FIELDS

__all__ = ["MethodScores", "score_student", "score_gaussians", "score_teacher", "score_copy_input", "summarize"]


@dataclass
class MethodScores:
    name: str
    kind: str  # "student" | "reference"
    seeds: list[int]
    per_object: dict[str, Tensor] = field(default_factory=dict)  # name -> [B]
    stats: dict = field(default_factory=dict)  # Gaussian statistics (methods that make Gaussians)
    gallery: dict[str, Tensor] = field(default_factory=dict)  # display renders of the first objects
    info: dict = field(default_factory=dict)  # parameters, latency, description

    def add(self, name: str, values: Tensor) -> None:  # values [b]
        self.per_object.setdefault(name, [])
        self.per_object[name].append(values.detach().float().cpu())

    def finish(self) -> MethodScores:
        self.per_object = {k: torch.cat(v) if isinstance(v, list) else v for k, v in self.per_object.items()}
        return self


def _band_px(settings, resolution: int) -> int:
    return max(1, round(settings.fog_band * resolution))


def _elevation_groups(refs) -> dict[str, Tensor]:
    el = refs.data.novel.elevations_deg
    return {f"el{round(float(e) - float(el.min()) + 0.0):d}": (el == e) for e in torch.unique(el)}


def score_images_novel(
    scores: MethodScores,
    premul: Tensor,  # [b, Vn, 3, r, r] the prediction on black
    alpha: Tensor,  # [b, Vn, 1, r, r]
    refs,
    index: slice,
    resolution: int,
    settings,
    lpips=None,
) -> None:
    bg = refs.meta["background"]
    gt, _, gt_alpha = refs.data.novel_gt(resolution, index, bg)
    pred = (premul + torch.tensor(bg).reshape(1, 1, 3, 1, 1) * (1 - alpha)).clamp(0, 1)
    tag = f"@{resolution}"
    p = psnr(pred, gt)
    scores.add("psnr" + tag, p.mean(1))
    for name, mask in _elevation_groups(refs).items():
        scores.add(f"psnr{tag}_{name}", p[:, mask].mean(1))
    scores.add("ssim" + tag, ssim(pred, gt).mean(1))
    if lpips is not None and resolution == max(refs.data.novel_premul):
        scores.add("lpips" + tag, lpips(pred, gt).mean(1))
    scores.add("iou" + tag, foreground_iou(alpha, gt_alpha).mean(1))
    margin = max(1, round(resolution / min(refs.data.novel_premul)))  # one pixel of the teacher's resolution
    f = fog(alpha, premul, gt_alpha, _band_px(settings, resolution), margin)
    for name in ("fog_alpha", "fog_black", "outside_alpha", "outside_black"):
        scores.add(name + tag, f[name].mean(1))


def _render_novel(g: Gaussians, refs, resolution: int, backend: str) -> tuple[Tensor, Tensor]:
    from ..render import render

    vm, ks = refs.data.novel.at(resolution)
    b = g.means.shape[0]
    dev = g.means.device
    out = render(
        g,
        vm.to(dev).expand(b, -1, -1, -1),
        ks.to(dev).expand(b, -1, -1, -1),
        resolution,
        resolution,
        background=None,
        backend=backend,
    )
    premul = out.rgb.permute(0, 1, 4, 2, 3).float().cpu().clamp(0, 1)
    return premul, out.alpha.permute(0, 1, 4, 2, 3).float().cpu().clamp(0, 1)


def _at_teacher_cameras(scores: MethodScores, pred: Tensor, oi: Tensor | None, refs, index: slice) -> None:
    """pred [b, V, 3, R, R] on the teacher's background: agreement with OI and ground truth at C."""
    gt = refs.data.layout_gt[index].float() / 255.0
    if oi is not None:
        a = psnr(pred, oi)
        s = ssim(pred, oi)
        scores.add("agree_seen", a[:, 0])
        scores.add("agree_unseen", a[:, 1:].mean(1))
        scores.add("agree_seen_ssim", s[:, 0])
        scores.add("agree_unseen_ssim", s[:, 1:].mean(1))
    g = psnr(pred, gt)
    scores.add("gt_seen", g[:, 0])
    scores.add("gt_unseen", g[:, 1:].mean(1))


def _gallery(scores: MethodScores, refs, settings, index: slice, premul: Tensor, alpha: Tensor) -> None:
    k = settings.grid_objects - index.start
    if k > 0:
        scores.gallery.setdefault("premul", []).append(premul[:k])
        scores.gallery.setdefault("alpha", []).append(alpha[:k])


def _finish_gallery(scores: MethodScores) -> None:
    scores.gallery = {k: torch.cat(v) for k, v in scores.gallery.items()}


@torch.no_grad()
def score_gaussians(
    name: str,
    predict: Callable[[slice, int], Gaussians],  # (objects, draw) -> batched Gaussians [b, N]
    refs,
    settings,
    teacher,
    objects: int,
    draws: int,
    lpips=None,
    backend: str = "auto",
    kind: str = "student",
    log: Callable[[str], None] = lambda s: None,
) -> MethodScores:
    """Render a method's Gaussians at C (each draw) and at the novel cameras (draw 0) and score them.

    ``log`` gets progress lines (objects done / total, rate, ETA every ``$DD3G_PROGRESS_SECONDS``)."""
    from ..render import render

    cams = teacher.cameras()
    res = cams.resolution
    bg = torch.tensor(refs.meta["background"], dtype=torch.float32)
    scores = MethodScores(name, kind, refs.data.seeds[:objects])
    kept: list[Gaussians] = []
    broken = torch.zeros(objects, dtype=torch.bool)
    progress = Progress(f"scoring {name}", objects, log, unit="objects")
    for start in range(0, objects, settings.batch_size):
        sl = slice(start, min(start + settings.batch_size, objects))
        at_c = []
        for draw in range(draws):
            raw = predict(sl, draw)
            g, bad = _sanitize(raw)
            broken[sl] |= bad
            b, dev = g.means.shape[0], g.means.device
            out = render(
                g,
                cams.viewmats.to(dev).expand(b, -1, -1, -1),
                cams.Ks.to(dev).expand(b, -1, -1, -1),
                res,
                res,
                background=bg.to(dev),
                backend=backend,
            )
            pred = out.rgb.permute(0, 1, 4, 2, 3).float().cpu().clamp(0, 1)
            _at_teacher_cameras(scores, pred, refs.oi(draw, sl), refs, sl)
            at_c.append(pred)
            if draw == 0:
                kept.append(raw.to("cpu"))
                for r in sorted(refs.data.novel_premul):
                    premul, alpha = _render_novel(g, refs, r, backend)
                    score_images_novel(scores, premul, alpha, refs, sl, r, settings, lpips)
                    if r == max(refs.data.novel_premul):
                        _gallery(scores, refs, settings, sl, premul, alpha)
        if draws > 1:
            scores.add("diversity", psnr(at_c[0], at_c[1]).mean(1))
        progress.update(sl.stop - sl.start)
    progress.close()
    scores.finish()
    # agreement and gt at C were added once per draw: average the draws per object
    for k in ("agree_seen", "agree_unseen", "agree_seen_ssim", "agree_unseen_ssim", "gt_seen", "gt_unseen"):
        if k in scores.per_object:
            scores.per_object[k] = _mean_over_draws(scores.per_object[k], objects, draws, settings.batch_size)
    for v in scores.per_object.values():  # a broken object scores NaN: reported per object by summarize
        v[broken] = math.nan
    scores.info["nonfinite_objects"] = [scores.seeds[i] for i in broken.nonzero().flatten().tolist()]
    _finish_gallery(scores)
    lay = teacher.layout
    g_all = Gaussians(**{k: torch.cat([getattr(g, k) for g in kept]) for k in GAUSSIAN_FIELDS})
    scores.stats = gaussian_statistics(g_all, lay.radius, lay.fov_deg, res, max(refs.data.novel_premul))
    return scores


def _sanitize(g: Gaussians) -> tuple[Gaussians, Tensor]:
    """(Gaussians with every non-finite object replaced by an invisible one, bad [b] bool): the renderer
    refuses NaN, and one broken object must not hide the others' scores."""
    bad = torch.zeros(g.means.shape[0], dtype=torch.bool, device=g.means.device)
    for k in GAUSSIAN_FIELDS:
        bad |= ~torch.isfinite(getattr(g, k)).flatten(1).all(1)
    if not bad.any():
        return g, bad.cpu()
    fields = {k: getattr(g, k).clone() for k in GAUSSIAN_FIELDS}
    for v in fields.values():
        v[bad] = 0.0
    fields["quats"][bad] = torch.tensor([1.0, 0.0, 0.0, 0.0], device=g.means.device)
    fields["opacity_logits"][bad] = -30.0
    return Gaussians(**fields), bad.cpu()


def _mean_over_draws(x: Tensor, objects: int, draws: int, batch: int) -> Tensor:
    """Values were appended batch by batch, draw by draw: regroup to [objects] means over draws."""
    out, i = [], 0
    for start in range(0, objects, batch):
        b = min(batch, objects - start)
        out.append(x[i : i + b * draws].reshape(draws, b).mean(0))
        i += b * draws
    return torch.cat(out)


def score_student(model, teacher, refs, settings, name: str = "student", lpips=None, backend="auto", log=print):
    cams = teacher.cameras()
    dev = teacher.device
    inputs = refs.data.inputs
    conds: dict[int, object] = {}

    def predict(sl: slice, draw: int) -> Gaussians:
        if sl.start not in conds:
            conds.clear()
            conds[sl.start] = teacher.encode_condition(inputs[sl].to(dev))
        noise = heldout_noise(teacher, refs.data.seeds[sl], draw).to(dev)
        out = model(noise, cams.embedding, conds[sl.start], inputs[sl].to(dev), cams.viewmats, cams.Ks, cams.resolution)
        return out.gaussians

    return score_gaussians(
        name, predict, refs, settings, teacher, len(refs.data), refs.draws, lpips, backend, "student", log
    )


def score_teacher(refs, settings, teacher) -> MethodScores:
    """The teacher's OI: against ground truth at C, and at the novel cameras that are its own views
    (display resolution: OI upsampled bicubically, what showing them larger looks like)."""
    scores = MethodScores("teacher (OI)", "reference", refs.data.seeds)
    lay = teacher.layout
    novel = refs.data.novel
    match = []
    for v, az in enumerate(lay.azimuths_deg):
        d = (novel.azimuths_deg - az).remainder(360.0)
        hit = ((d < 1e-3) | (d > 360 - 1e-3)) & ((novel.elevations_deg - lay.elevation_deg).abs() < 1e-3)
        if hit.any():
            match.append((v, int(hit.nonzero()[0, 0])))
    bg = refs.meta["background"]
    n = len(refs.data)
    for start in range(0, n, settings.batch_size):
        sl = slice(start, min(start + settings.batch_size, n))
        oi = refs.oi(0, sl)
        _at_teacher_cameras(scores, oi, None, refs, sl)
        if match:
            views = torch.tensor([m[0] for m in match])
            novel_idx = torch.tensor([m[1] for m in match])
            for r in sorted(refs.data.novel_premul):
                gt = refs.data.novel_gt(r, sl, bg)[0][:, novel_idx]
                pred = oi[:, views]
                if r != pred.shape[-1]:
                    pred = F.interpolate(pred.flatten(0, 1), size=(r, r), mode="bicubic", align_corners=False)
                    pred = pred.reshape(*oi[:, views].shape[:3], r, r).clamp(0, 1)
                scores.add(f"psnr@{r}", psnr(pred, gt).mean(1))
                scores.add(f"ssim@{r}", ssim(pred, gt).mean(1))
        if refs.draws > 1:
            scores.add("diversity", psnr(refs.oi(0, sl), refs.oi(1, sl)).mean(1))
    scores.info["note"] = f"its {len(match)} own views only; upsampled at display resolution"
    return scores.finish()


def score_copy_input(refs, settings, teacher) -> MethodScores:
    """The floor: the input image (composited, resized) copied to every view."""
    from ..images import composite_rgb, resize_square

    scores = MethodScores("copy-input", "reference", refs.data.seeds)
    bg = refs.meta["background"]
    res = teacher.layout.resolution
    n, vn = len(refs.data), refs.data.novel.num_views
    for start in range(0, n, settings.batch_size):
        sl = slice(start, min(start + settings.batch_size, n))
        inputs = refs.data.inputs[sl]
        v = refs.data.layout_gt.shape[1]
        copy = resize_square(composite_rgb(inputs, bg), res).clamp(0, 1)[:, None].expand(-1, v, -1, -1, -1)
        for draw in range(refs.draws):
            _at_teacher_cameras(scores, copy, refs.oi(draw, sl), refs, sl)
        straight = inputs.float() / 255.0
        for r in sorted(refs.data.novel_premul):
            rgba = resize_square(straight, r).clamp(0, 1)
            alpha = rgba[:, 3:4]
            premul = rgba[:, :3] * alpha
            score_images_novel(
                scores,
                premul[:, None].expand(-1, vn, -1, -1, -1),
                alpha[:, None].expand(-1, vn, -1, -1, -1),
                refs,
                sl,
                r,
                settings,
            )
    scores.finish()
    for k in ("agree_seen", "agree_unseen", "agree_seen_ssim", "agree_unseen_ssim", "gt_seen", "gt_unseen"):
        scores.per_object[k] = _mean_over_draws(scores.per_object[k], n, refs.draws, settings.batch_size)
    return scores


def summarize(scores: MethodScores, subset: int | None = None) -> dict:
    """Means over the objects whose value is finite, with the seeds of those that are not."""
    out: dict = {}
    nonfinite: dict[str, list[int]] = {}
    for k, v in scores.per_object.items():
        v = v[:subset] if subset else v
        ok = torch.isfinite(v)
        out[k] = float(v[ok].mean()) if ok.any() else math.nan
        if not ok.all():
            nonfinite[k] = [scores.seeds[i] for i in (~ok).nonzero().flatten().tolist()]
    out["objects"] = min(len(scores.seeds), subset or len(scores.seeds))
    if nonfinite:
        out["nonfinite"] = nonfinite
    return out
