"""The evaluation stage: metrics on constructed images, the fit ceiling, the whole recipe on the shipped
tiny teacher and student (small settings), references cache, bad input, non-finite renders per object."""

import json
import math
from pathlib import Path

import pytest
import torch

from dd3g_core.cli import main as cli_main
from dd3g_core.evaluation.fit import fit_gaussians
from dd3g_core.evaluation.gaussian_stats import gaussian_statistics, pixel_footprint
from dd3g_core.evaluation.metrics import fog, fog_band, foreground_iou, psnr
from dd3g_core.evaluation.references import load_references
from dd3g_core.evaluation.run import evaluate_checkpoints, get_references
from dd3g_core.evaluation.scoring import score_gaussians, summarize
from dd3g_core.evaluation.suite import StudentMismatchError, check_student_matches_teacher
from dd3g_core.gaussians import Gaussians
from dd3g_core.model import PEPD
from dd3g_core.paths import TINY_STUDENT_DIR
from dd3g_core.profiles import EvaluationSettings
from dd3g_core.teacher import load_teacher
from pipelines.checks.evaluation import evaluation_problems

ROOT = Path(__file__).resolve().parents[1]
SMALL = EvaluationSettings(
    heldout_objects=2, draws=2, novel_azimuths=4, display_scale=2, fit_objects=1, fit_steps=30, grid_objects=2
)


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(None)


@pytest.fixture(scope="module")
def refs(teacher, tmp_path_factory):
    return get_references(teacher, SMALL, 4096, tmp_path_factory.mktemp("refs"), log=lambda s: None)


def test_fog_is_alpha_around_the_object_where_the_ground_truth_is_empty():
    gt = torch.zeros(1, 1, 1, 32, 32)
    gt[..., 12:20, 12:20] = 1.0
    band = fog_band(gt, 3)
    assert band.sum() == 14 * 14 - 8 * 8 and not band[..., 12:20, 12:20].any()
    clean = gt.clone()
    hazy = gt + 0.1 * (gt == 0)  # a faint veil everywhere the object is not
    white = hazy.expand(-1, -1, 3, -1, -1) * 0.9
    assert fog(clean, clean.expand(-1, -1, 3, -1, -1), gt, 3)["fog_alpha"].item() == 0
    f = fog(hazy, white, gt, 3)
    assert f["fog_alpha"].item() == pytest.approx(0.1) and f["fog_black"].item() == pytest.approx(0.09)
    assert f["outside_alpha"].item() == pytest.approx(0.1)
    wide = torch.zeros_like(gt)
    wide[..., 11:21, 11:21] = 1.0  # solid, one pixel too wide all round: a silhouette error, not haze
    f = fog(wide, wide.expand(-1, -1, 3, -1, -1), gt, 3, margin_px=1)
    assert f["fog_alpha"].item() == 0 and f["outside_alpha"].item() == pytest.approx(36 / 132)
    f = fog(0.3 * gt, 0.3 * gt.expand(-1, -1, 3, -1, -1), gt, 3)  # nowhere solid: every faint pixel is haze
    assert f["fog_alpha"].item() == 0 and fog(0.3 * hazy, white, gt, 3)["fog_alpha"].item() == pytest.approx(0.03)
    assert foreground_iou(gt, gt).item() == 1.0 and foreground_iou(torch.zeros_like(gt), gt).item() == 0.0


def test_gaussian_statistics_in_pixels():
    n = 1000
    g = Gaussians(
        means=torch.zeros(n, 3),
        quats=torch.tensor([1.0, 0, 0, 0]).expand(n, 4),
        log_scales=torch.full((n, 3), math.log(pixel_footprint(1.5, 49.1, 32))),  # one pixel at 32 px
        opacity_logits=torch.cat([torch.full((900,), -5.0), torch.full((100,), 5.0)]),
        sh=torch.full((n, 1, 3), 2.0),  # near white
    )
    s = gaussian_statistics(g, 1.5, 49.1, 32, 128)
    assert s["transparent_share"] == pytest.approx(0.9) and s["white_fog_share"] == pytest.approx(0.9)
    assert s["scale_px_median"] == pytest.approx(1.0, rel=1e-4) and s["scale_px_median_display"] == pytest.approx(4.0)
    assert s["subpixel_share"] == 0.0 and sum(s["opacity_histogram"]) == pytest.approx(1.0)


def test_fit_ceiling_reproduces_rendered_views(teacher):
    from dd3g_core.render import render
    from dd3g_core.world import sample_object

    cams = teacher.cameras()
    target = render(sample_object(7, 800), cams.viewmats, cams.Ks, 32, 32, background=torch.ones(3))
    target = target.rgb.permute(0, 3, 1, 2)[None]  # [1, V, 3, 32, 32]
    g, losses = fit_gaussians(target, cams.viewmats, cams.Ks, (1.0, 1.0, 1.0), 1024, 60)
    assert losses[-1] < 0.4 * losses[0]
    out = render(g, cams.viewmats[None], cams.Ks[None], 32, 32, background=torch.ones(3)).rgb.permute(0, 1, 4, 2, 3)
    assert psnr(out, target).mean() > 20.0


@pytest.mark.slow
def test_evaluation_of_the_shipped_student_writes_every_number_and_picture(teacher, refs, tmp_path):
    out = tmp_path / "eval"
    m = evaluate_checkpoints(
        {"student": TINY_STUDENT_DIR, "again": TINY_STUDENT_DIR}, teacher, SMALL, out, references=refs, log=print
    )
    assert {"metrics.json", "report.md", "compare_white.png", "compare_black.png", "sides_black.png"} <= {
        p.name for p in out.iterdir()
    }
    assert set(m["summaries"]) == {"student", "again", "fit ceiling", "teacher (OI)", "copy-input"}
    s = m["summaries"]["student"]
    for key in ("agree_seen", "agree_unseen", "psnr@32", "psnr@64", "ssim@64", "iou@64", "fog_alpha@64", "diversity"):
        assert math.isfinite(s[key]), key
    assert "lpips@64" not in s and "unavailable" in m["header"]["LPIPS"]  # never faked
    assert m["summaries"]["copy-input"]["agree_seen"] > 28  # the teacher copies its seen view
    assert m["deltas"]["again"]["psnr@64"] == pytest.approx(0.0, abs=1e-6)  # same weights, same numbers
    assert (
        m["info"]["student"]["speedup"] > 1
        and evaluation_problems(out, json.loads((out / "metrics.json").read_text())) == []
    )
    report = (out / "report.md").read_text()
    assert "| student |" in report and "## Ablations" in report and "fit ceiling" in report


def test_references_are_cached_and_reloaded_exactly(teacher, refs, tmp_path):
    again = get_references(teacher, SMALL, 4096, tmp_path, log=lambda s: None)
    (version,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    loaded = load_references(version)
    assert torch.equal(loaded.teacher_views, again.teacher_views)
    assert torch.equal(loaded.data.novel_premul[64], again.data.novel_premul[64])
    assert torch.equal(loaded.teacher_views, refs.teacher_views)  # deterministic: same N, same OI
    (version / "references.json").write_text("{not json")
    with pytest.raises(ValueError, match="damaged evaluation references"):
        load_references(version)


def test_non_finite_renders_are_reported_per_object_not_averaged_away(teacher, refs):
    student = PEPD.from_pretrained(TINY_STUDENT_DIR)
    cams = teacher.cameras()
    from dd3g_core.evaluation.heldout import heldout_noise

    def predict(sl, draw):
        x = refs.data.inputs[sl]
        g = student(
            heldout_noise(teacher, refs.data.seeds[sl], draw),
            cams.embedding,
            teacher.encode_condition(x),
            x,
            cams.viewmats,
            cams.Ks,
            32,
        ).gaussians
        g.means[1:] = float("nan")  # the second object breaks
        return g

    scores = score_gaussians("broken", predict, refs, SMALL, teacher, 2, 1)
    s = summarize(scores)
    assert s["nonfinite"]["psnr@64"] == [refs.data.seeds[1]]
    assert math.isfinite(s["psnr@64"])  # the mean of the finite object, the broken one listed


def test_a_student_of_another_teacher_is_refused_with_the_differing_keys(teacher):
    other = PEPD(PEPD.read_config(TINY_STUDENT_DIR)[0].replace(latent_resolution=16))
    with pytest.raises(StudentMismatchError, match="latent_resolution"):
        check_student_matches_teacher(other, teacher)


def test_eval_cli_on_your_images_and_bad_input(tmp_path, capsys):
    out = tmp_path / "mine"
    bird = ROOT / "assets" / "samples" / "bird_rgba.png"
    assert cli_main(["eval", "--inputs", str(bird), "--draws", "1", "-o", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (
        m["mode"] == "inputs" and math.isfinite(m["means"]["agree_unseen"]) and (out / "inputs_compare.png").is_file()
    )
    capsys.readouterr()
    for argv, words in (
        (["eval", "--folder", str(tmp_path / "nothing"), "-o", str(tmp_path / "x")], "does not exist"),
        (["eval", "--inputs", str(tmp_path / "*.png"), "-o", str(tmp_path / "y")], "no image file matches"),
        (["eval", "--checkpoint", str(tmp_path), "-o", str(tmp_path / "z")], "not a PEPD checkpoint"),
    ):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()  # nothing half-written


def test_lpips_only_from_complete_local_weights(tmp_path):
    from safetensors.torch import save_file

    from dd3g_core.distill.perceptual import vgg16_features
    from dd3g_core.evaluation.metrics import lpips_or_none

    torch.manual_seed(0)
    features = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    save_file(features, str(tmp_path / "vgg_only.safetensors"))
    lin = {f"lin{k}.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
    save_file({**features, **lin}, str(tmp_path / "lpips.safetensors"))
    assert lpips_or_none(None)[0] is None and "unavailable" in lpips_or_none(None)[1]
    assert lpips_or_none(str(tmp_path / "missing.safetensors"))[0] is None
    with pytest.raises(ValueError, match="not LPIPS"):
        lpips_or_none(str(tmp_path / "vgg_only.safetensors"))
    metric, name = lpips_or_none(str(tmp_path / "lpips.safetensors"))
    x = torch.rand(1, 2, 3, 32, 32)
    d = metric(x, torch.cat([x[:, :1], torch.rand(1, 1, 3, 32, 32)], 1))
    assert d.shape == (1, 2) and d[0, 0] == 0 and d[0, 1] > 0 and "LPIPS-VGG16" in name
