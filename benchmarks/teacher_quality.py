"""Tiny teacher quality: its views vs ground-truth renders of held-out procedural objects.

    python benchmarks/teacher_quality.py [--teacher assets/models/tiny-teacher] [--objects 64]
                                         [--samples 8] [--steps 25] [--guidance 1.0]
                                         [--extra-guidance 2.0] [--json out.json]

Data: the first ``--objects`` seeds of the ``heldout`` split (never trained on), rendered exactly
as the teacher's training data (``dd3g_core.teacher.training.data.render_example``): the input is the
64 px RGBA of the layout's input camera, the ground truth the 4 layout views (azimuth
0/90/180/270, elevation 0, 32 px) on white. View 0 is the *seen* view (same camera as the
input), views 1-3 are *unseen*.

Contestants, all scored in this run against the same ground truth:

* ``sample``      — one deterministic DDIM sample per object (``--steps``, ``--guidance``; noise
  seed k for sample k), PSNR/SSIM averaged over the ``--samples`` single samples;
* ``mean-of-K``   — the pixel mean of the K samples (an estimate of the posterior mean, which
  is what PSNR rewards; reported because single samples of a multimodal posterior are
  penalised for being sharp);
* ``x0@t999``     — the one-step x0 readout of the first DDIM step (informative only);
* ``sample g=G``  — one sample with guidance ``--extra-guidance`` (skipped when 0);
* baselines: ``copy-input`` (the input, composited on white and resized to 32 px like the
  teacher sees it, in every view); ``train-mean`` (per-view mean image of the first
  ``--train-objects`` training objects — a blurry "average object" per camera); ``mirror``
  (view 0: copy of the input; view 2, azimuth 180: the input flipped horizontally — a
  silhouette-exact guess for objects roughly symmetric front/back; views 1 and 3, azimuth
  90/270: the training mean, because neither the input nor its mirror shows those sides and
  the training mean is the better of the two guesses there).

Metrics: PSNR (dB, data range 1, per image, then averaged over objects and views) and SSIM
(``torchmetrics`` structural_similarity_index_measure: Gaussian window 11, sigma 1.5, data range
1, per image, then averaged). Seen = view 0; unseen = views 1-3.

BAR lines (the issue's bars): unseen mean-of-8 PSNR minus the best baseline's >= 2 dB; unseen
single-sample PSNR minus the training-mean baseline > 0; seen single-sample PSNR >= 20 dB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dd3g_core.evaluation.metrics import psnr, ssim  # noqa: E402
from dd3g_core.images import prepare_images  # noqa: E402
from dd3g_core.teacher import sampler as ddim  # noqa: E402
from dd3g_core.teacher.tiny import TinyTeacher  # noqa: E402
from dd3g_core.teacher.training.data import RenderSpec, render_example  # noqa: E402
from dd3g_core.world import split_seeds  # noqa: E402


def render_set(seeds, spec: RenderSpec) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, views = zip(*(render_example(s, spec) for s in seeds))
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(views))


def training_mean(count: int, spec: RenderSpec, data_dir: str | None) -> tuple[torch.Tensor, str]:
    """Per-view mean [V, 3, H, W] over the first ``count`` training objects (cache if it has them)."""
    if data_dir:
        from dd3g_core.teacher.training.data import MultiViewDataset

        try:
            ds = MultiViewDataset(data_dir, max_objects=count)
            if len(ds) >= count:
                return ds.mean_views(count), f"cache {data_dir}"
        except FileNotFoundError:
            pass
    acc = None
    for s in split_seeds("train", count):
        _, v = render_example(s, spec)
        acc = v.astype(np.float64) if acc is None else acc + v
    return torch.from_numpy(acc / count).float() / 255.0, "rendered"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(REPO / "assets" / "models" / "tiny-teacher"))
    p.add_argument("--objects", type=int, default=64)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--extra-guidance", type=float, default=2.0, help="also score one sample at this guidance (0: skip)")
    p.add_argument("--train-objects", type=int, default=1000)
    p.add_argument(
        "--train-data",
        default=os.environ.get("DD3G_TEACHER_DATA", "teacher_recipe/data"),
        help="training cache to take the mean from (rendered if absent)",
    )
    p.add_argument("--batch", type=int, default=64, help="objects per U-Net batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write all numbers here")
    a = p.parse_args(argv)
    if a.objects < 64:
        print(f"note: --objects {a.objects} < 64, the issue's bar asks for >= 64")
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()

    teacher = TinyTeacher.from_pretrained(a.teacher)
    spec = RenderSpec(layout="tiny", background=teacher.background)
    seeds = split_seeds("heldout", a.objects)
    inputs, gt_u8 = render_set(seeds, spec)
    gt = gt_u8.float() / 255.0  # [B, V, 3, 32, 32]
    b, v = gt.shape[:2]
    mean_img, mean_src = training_mean(a.train_objects, spec, a.train_data)
    t_data = time.perf_counter() - t_start

    preds: dict[str, torch.Tensor] = {}
    copy = prepare_images(inputs, teacher.layout.resolution, teacher.background)  # [B, 3, 32, 32]
    preds["copy-input"] = copy[:, None].expand(-1, v, -1, -1, -1)
    preds["train-mean"] = mean_img[None].expand(b, -1, -1, -1, -1)
    mirror = preds["train-mean"].clone()
    mirror[:, 0] = copy
    az = list(teacher.layout.azimuths_deg)
    if 180.0 in az:
        mirror[:, az.index(180.0)] = copy.flip(-1)
    preds["mirror"] = mirror

    # --- teacher samples
    samples = []
    x0_readout = None
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in range(a.samples):
            outs = []
            for s in range(0, b, a.batch):
                sl = slice(s, s + a.batch)
                cond = teacher.encode_condition(inputs[sl])
                gen = torch.Generator("cpu").manual_seed(10_000 * k + s)
                noise = teacher.draw_noise(cond.batch_size, gen)
                out = teacher.sample(cond, noise, steps=a.steps, guidance=a.guidance)
                outs.append(out.images)
                if k == 0:
                    emb = teacher.cameras().embedding.expand(cond.batch_size, -1, -1)
                    t_first = teacher.scheduler.config.num_train_timesteps - 1  # trailing: first step t = 999
                    mo = teacher.model_output(noise, t_first, cond, emb, a.guidance)
                    abar = ddim.alpha_bar(teacher.scheduler, ddim.as_timesteps(t_first, cond.batch_size))
                    x0 = ddim.to_x0(mo, noise, abar, teacher.prediction_type)[:, :v]
                    dec = teacher.decode_latents(x0.flatten(0, 1)).unflatten(0, x0.shape[:2])
                    x0_readout = dec if x0_readout is None else torch.cat([x0_readout, dec])
            samples.append(torch.cat(outs))
        t_samples = time.perf_counter() - t0
        extra = None
        if a.extra_guidance and a.extra_guidance != a.guidance:
            outs = []
            for s in range(0, b, a.batch):
                sl = slice(s, s + a.batch)
                cond = teacher.encode_condition(inputs[sl])
                gen = torch.Generator("cpu").manual_seed(s)
                outs.append(
                    teacher.sample(
                        cond, teacher.draw_noise(cond.batch_size, gen), steps=a.steps, guidance=a.extra_guidance
                    ).images
                )
            extra = torch.cat(outs)

    stack = torch.stack(samples)  # [K, B, V, 3, H, W]
    rows: dict[str, dict[str, float]] = {}

    def score(name: str, pred_list: list[torch.Tensor]) -> None:
        ps = torch.stack([psnr(x, gt) for x in pred_list])  # [K, B, V]
        ss = torch.stack([ssim(x, gt) for x in pred_list])
        rows[name] = {
            "seen_psnr": ps[..., 0].mean().item(),
            "unseen_psnr": ps[..., 1:].mean().item(),
            "seen_ssim": ss[..., 0].mean().item(),
            "unseen_ssim": ss[..., 1:].mean().item(),
            **{f"view{i}_psnr": ps[..., i].mean().item() for i in range(v)},
        }

    score(f"sample (g={a.guidance:g}, avg of {a.samples})", list(stack))
    score(f"mean-of-{a.samples}", [stack.mean(0)])
    score("x0@t999 (one step)", [x0_readout])
    if extra is not None:
        score(f"sample g={a.extra_guidance:g}", [extra])
    for name in ("copy-input", "train-mean", "mirror"):
        score(name, [preds[name]])
    # sample diversity: mean per-pixel std over the K samples (unseen views)
    diversity = stack[:, :, 1:].std(0).mean().item() if a.samples > 1 else 0.0

    print(f"teacher: {a.teacher}")
    print(
        f"objects: {b} held-out seeds {seeds[0]}..{seeds[-1]}; {a.samples} samples x {a.steps} DDIM steps, "
        f"guidance {a.guidance:g}; training mean over {a.train_objects} objects ({mean_src})"
    )
    print(
        f"time: data {t_data:.1f} s, {a.samples} sample passes {t_samples:.1f} s "
        f"({b * a.samples / t_samples:.2f} samples/s at batch {min(a.batch, b)})"
    )
    hdr = (
        f"{'contestant':32s} {'seen PSNR':>9s} {'unseen PSNR':>11s} {'seen SSIM':>9s} {'unseen SSIM':>11s}  "
        + " ".join(f"{'v' + str(i):>6s}" for i in range(v))
    )
    print(hdr)
    for name, r in rows.items():
        print(
            f"{name:32s} {r['seen_psnr']:9.2f} {r['unseen_psnr']:11.2f} {r['seen_ssim']:9.3f} "
            f"{r['unseen_ssim']:11.3f}  " + " ".join(f"{r[f'view{i}_psnr']:6.2f}" for i in range(v))
        )
    print(f"sample diversity (unseen, mean per-pixel std over samples): {diversity:.4f}")

    base = {n: rows[n]["unseen_psnr"] for n in ("copy-input", "train-mean", "mirror")}
    best_name = max(base, key=base.get)
    single = rows[f"sample (g={a.guidance:g}, avg of {a.samples})"]
    meank = rows[f"mean-of-{a.samples}"]
    bars = [
        (
            f"unseen_mean_of_{a.samples}_minus_best_baseline_db({best_name})",
            meank["unseen_psnr"] - base[best_name],
            2.0,
            meank["unseen_psnr"] - base[best_name] >= 2.0,
        ),
        (
            "unseen_single_sample_minus_train_mean_db",
            single["unseen_psnr"] - base["train-mean"],
            0.0,
            single["unseen_psnr"] - base["train-mean"] > 0.0,
        ),
        ("seen_single_sample_psnr_db", single["seen_psnr"], 20.0, single["seen_psnr"] >= 20.0),
    ]
    for name, value, target, ok in bars:
        print(f"BAR {name} {value:.2f} {target:g} {'PASS' if ok else 'FAIL'}")
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "bars": [list(x) for x in bars],
                    "objects": b,
                    "samples": a.samples,
                    "steps": a.steps,
                    "guidance": a.guidance,
                    "diversity": diversity,
                    "teacher": a.teacher,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
