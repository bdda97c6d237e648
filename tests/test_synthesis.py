"""The rgba_images stage: colour-key matting, post-processing, partitions, SDXL and rembg paths."""

import json
import os

import numpy as np
import pytest

from dd3g_core import synthesis as S
from dd3g_core.profiles import get_profile
from dd3g_core.shards import iter_samples, validate_shards
from dd3g_core.synthesis.generators import GeneratedImage
from dd3g_core.synthesis.stage import SynthesisBackends

from stand_ins import build_stub_onnx, build_tiny_sdxl


def smoke(**changes):
    return get_profile("smoke").rgba.replace(**changes)


# --------------------------------------------------------------------------------------
# colour-key matting
# --------------------------------------------------------------------------------------


def test_colorkey_alpha_iou_on_procedural_images():
    gen = S.ProceduralGenerator(resolution=96, num_gaussians=2000, split="heldout")
    matting = S.ColorKeyMatting()
    ious = []
    for seed in range(6):
        img = gen.generate_one(seed)
        assert img.rgb.shape == (96, 96, 3) and img.rgb.dtype == np.uint8  # RGB only, like a 2D generator
        result = matting.matte(img.rgb)
        ious.append(S.alpha_iou(result.rgba[..., 3], img.true_rgba[..., 3]))
        assert result.info["background_plain"] is True
        assert np.allclose(result.info["background_rgb"], img.record["background_rgb"], atol=1.0)
        again = matting.matte(img.rgb)  # deterministic
        assert np.array_equal(again.rgba, result.rgba)
    assert np.mean(ious) >= 0.95 and min(ious) >= 0.9, ious


def test_colorkey_despill_removes_key_fringe():
    gen = S.ProceduralGenerator(resolution=64, num_gaussians=1500, split="heldout")
    img = gen.generate_one(3)
    true = img.true_rgba.astype(np.float32)
    edge = (img.true_rgba[..., 3] > 64) & (img.true_rgba[..., 3] < 230)
    assert edge.sum() > 10
    err = {}
    for despill in (True, False):
        rgba = S.ColorKeyMatting(despill=despill).matte(img.rgb).rgba.astype(np.float32)
        err[despill] = np.abs(rgba[..., :3] - true[..., :3])[edge].mean()
    assert err[True] < 0.5 * err[False] and err[True] < 25, err


def test_colorkey_on_white_background_and_non_plain_background_flag():
    rgb = np.full((48, 48, 3), 255, np.uint8)
    rgb[12:36, 16:30] = (200, 40, 40)
    result = S.ColorKeyMatting().matte(rgb)
    a = result.rgba[..., 3]
    assert (a[12:36, 16:30] == 255).all() and a.sum() == 255 * 24 * 14
    noisy = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    assert S.ColorKeyMatting().matte(noisy).info["background_plain"] is False


# --------------------------------------------------------------------------------------
# post-processing and filters
# --------------------------------------------------------------------------------------


def soft_rect(h, w, box, color=(230, 30, 20)):
    """uint8 RGBA with an opaque rectangle [x0, y0, x1, y1) and a half-transparent 1-px rim."""
    rgba = np.zeros((h, w, 4), np.uint8)
    x0, y0, x1, y1 = box
    rgba[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = (*color, 128)
    rgba[y0:y1, x0:x1] = (*color, 255)
    return rgba


def test_recentre_square_centred_with_margin_and_no_fringe():
    rgba = soft_rect(90, 120, (10, 20, 50, 80))  # 40 x 60 object, off centre, non-square frame
    out, rec = S.recentre(rgba, resolution=64, margin=0.1)
    assert out.shape == (64, 64, 4) and out.dtype == np.uint8
    a = out[..., 3].astype(np.float32) / 255
    ys, xs = np.nonzero(a > 0.5)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    assert abs(cy - 32) <= 1.0 and abs(cx - 32) <= 1.0
    # the longer side (height) spans (1 - 2 margin) of the output: margin ~ 6.4 px top and bottom
    assert abs(ys.min() - 6.4) <= 1.5 and abs(64 - ys.max() - 1 - 6.4) <= 1.5
    # premultiplied resize: every visible pixel keeps the object's colour (no dark rim)
    vis = out[..., 3] > 8
    assert np.abs(out[vis][:, :3].astype(int) - (230, 30, 20)).max() <= 6
    assert (out[out[..., 3] == 0][:, :3] == 0).all()
    assert rec["crop"][2] >= 62 and rec["source_bbox"] == [9, 19, 51, 81]


def test_recentre_pads_outside_the_source_with_transparency():
    rgba = soft_rect(40, 40, (1, 1, 20, 39))  # tall object near the left edge
    out, _ = S.recentre(rgba, resolution=32, margin=0.2)
    assert out[:, :3, 3].max() == 0 and out[:, -3:, 3].max() == 0
    with pytest.raises(ValueError, match="no opaque"):
        S.recentre(np.zeros((8, 8, 4), np.uint8), 16)


def test_quality_filters_reject_with_structured_reasons():
    f = S.QualityFilters(min_coverage=0.05, max_coverage=0.6, border_px=1)
    good = S.check_quality(soft_rect(64, 64, (16, 16, 48, 48)), f)
    assert good.passed and good.reasons == [] and good.stats["bbox"] == [15, 15, 49, 49]  # the 50 % rim counts
    border = S.check_quality(soft_rect(64, 64, (1, 10, 30, 50)), f)  # rim on column 0
    assert not border.passed and border.reason_names == ["touches_border"]
    assert border.reasons[0] == {"filter": "touches_border", "value": 0, "limit": 1}
    empty = S.check_quality(np.zeros((64, 64, 4), np.uint8), f)
    assert not empty.passed and empty.reason_names == ["empty"]
    small = S.check_quality(soft_rect(64, 64, (30, 30, 36, 36)), f)
    assert small.reason_names == ["coverage_low"] and small.reasons[0]["value"] < 0.05
    big = S.check_quality(soft_rect(64, 64, (2, 2, 62, 62)), f)
    assert big.reason_names == ["coverage_high"]
    json.dumps(border.to_dict())


# --------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------


class FlakyGenerator(S.ProceduralGenerator):
    """Procedural, but one seed yields a blank image and one raises (a 'bad image')."""

    def __init__(self, blank_seed, bad_seed, **kw):
        super().__init__(**kw)
        self.blank_seed, self.bad_seed, self.calls = blank_seed, bad_seed, 0

    def generate_one(self, seed):
        self.calls += 1
        if seed == self.bad_seed:
            raise OSError("image file is truncated")
        img = super().generate_one(seed)
        if seed == self.blank_seed:
            img.rgb[:] = img.rgb[0, 0]
        return img


def test_synthesize_shard_writes_valid_set_lists_rejects_and_caches(tmp_path):
    cfg = smoke()
    seeds = cfg.shard_seeds(1)
    assert seeds == [4, 5, 6, 7]
    gen = FlakyGenerator(blank_seed=5, bad_seed=6, resolution=cfg.render_resolution, num_gaussians=cfg.num_gaussians)
    backends = SynthesisBackends(cfg, generator=gen)
    summary, hit = S.synthesize_shard(tmp_path, cfg, 1, backends=backends)
    assert not hit
    assert summary.directory == S.stage_dir(tmp_path, cfg) / "shard-00001"
    validate_shards(summary.directory)
    m = summary.manifest
    assert m["attempted"] == 4 and m["accepted"] == 2 == summary.num_samples and m["num_rejected"] == 2
    assert m["stage_version"] == S.stage_version(cfg) and m["seeds"] == [4, 8]
    rejects = {r["seed"]: r for r in m["rejected"]}
    assert rejects[5]["stage"] == "filter" and rejects[5]["reasons"][0]["filter"] == "empty"
    assert rejects[6]["stage"] == "generate" and "truncated" in rejects[6]["error"]
    samples = list(iter_samples(summary.directory))
    assert [s["__key__"] for s in samples] == ["train00000004", "train00000007"]
    for s in samples:
        rgba, rec = s["rgba.png"], s["json"]
        assert rgba.shape == (32, 32, 4) and rgba.dtype == np.uint8
        assert rec["generator"] == "procedural" and rec["matting"] == "colorkey" and rec["source"] == "procedural"
        assert rec["filters"]["passed"] and rec["matting_iou"] >= 0.9
        assert rec["spec"]["seed"] == rec["object_seed"] == rec["seed"]  # train split starts at 0
        assert abs(rec["alpha_coverage"] - (rgba[..., 3] > 127).mean()) < 1e-9
        assert len(rec["bbox"]) == 4 and rec["stage_version"] == m["stage_version"]
    # re-run: a cache hit that builds nothing
    calls = gen.calls
    again, hit2 = S.synthesize_shard(tmp_path, cfg, 1, backends=backends)
    assert hit2 and gen.calls == calls and again.manifest == m
    # a damaged partition is rebuilt (atomically), the others are untouched
    tar = summary.shard_paths[0]
    tar.write_bytes(tar.read_bytes()[:100])
    rebuilt, hit3 = S.synthesize_shard(tmp_path, cfg, 1, backends=backends)
    assert not hit3 and validate_shards(rebuilt.directory).num_samples == 2


def test_synthesize_rgba_all_shards_and_preview(tmp_path):
    cfg = smoke(samples_per_shard=2)
    summaries = S.synthesize_rgba(tmp_path, cfg)
    assert [s.directory.name for s in summaries] == ["shard-00000", "shard-00001"]
    assert sum(s.manifest["accepted"] + s.manifest["num_rejected"] for s in summaries) == cfg.num_samples
    grid = S.preview_grid(S.stage_dir(tmp_path, cfg), 3)
    assert grid.shape == (32, 32 * min(3, sum(s.num_samples for s in summaries)), 4)
    assert S.preview_grid(summaries[0], 1).shape == (32, 32, 4)


def test_every_sample_failing_raises_and_writes_nothing(tmp_path):
    cfg = smoke(samples_per_shard=2, num_shards=1)

    class Broken(S.ProceduralGenerator):
        def generate_one(self, seed):
            raise RuntimeError("broken backend")

    with pytest.raises(RuntimeError, match="every sample"):
        S.synthesize_shard(tmp_path, cfg, 0, backends=SynthesisBackends(cfg, generator=Broken()))
    assert not (S.stage_dir(tmp_path, cfg) / "shard-00000").exists()


def test_config_validation_versions_and_presets(tmp_path):
    tiny, sm, full = (get_profile(name).rgba for name in ("tiny", "smoke", "full"))
    assert (tiny.generator, tiny.matting, tiny.resolution, tiny.num_shards) == ("procedural", "colorkey", 64, 8)
    assert (sm.num_shards, sm.samples_per_shard, sm.resolution) == (2, 4, 32)
    assert (full.generator, full.matting, full.resolution) == ("sdxl", "rembg", 256)
    assert S.stage_version(sm) != S.stage_version(sm.replace(margin=0.15))
    assert S.stage_version(sm) == S.stage_version(
        S.RGBASynthesisConfig(**json.loads(json.dumps(__import__("dataclasses").asdict(sm))))
    )
    with pytest.raises(ValueError, match="matting"):
        S.RGBASynthesisConfig(matting="magic")
    with pytest.raises(ValueError, match="exact"):
        S.RGBASynthesisConfig(generator="sdxl", matting="exact")
    with pytest.raises(ValueError, match="shard_index"):
        sm.shard_seeds(2)


# --------------------------------------------------------------------------------------
# prompts and missing models
# --------------------------------------------------------------------------------------


def test_prompt_list_shipped_and_empty_list_error(tmp_path):
    prompts = S.load_prompts("objects.txt")
    assert len(prompts) >= 150 and len(set(prompts)) == len(prompts)
    assert all(p and "#" not in p for p in prompts)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only comments\n\n   \n# here\n")
    with pytest.raises(S.EmptyPromptListError, match="no prompts"):
        S.load_prompts(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        S.load_prompts(tmp_path / "nope.txt")


def test_missing_model_paths_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("DD3G_SDXL_PATH", raising=False)
    monkeypatch.delenv("DD3G_REMBG_MODEL", raising=False)
    with pytest.raises(S.MissingModelError, match="DD3G_SDXL_PATH"):
        get_profile("full").rgba.resolved()
    with pytest.raises(S.MissingModelError, match="DD3G_SDXL_PATH"):
        S.stage_dir(tmp_path, get_profile("full").rgba)
    missing = tmp_path / "no-sdxl"
    with pytest.raises(S.MissingModelError, match=str(missing)):
        S.RGBASynthesisConfig(generator="sdxl", sdxl_path=str(missing)).resolved()
    with pytest.raises(S.MissingModelError, match="DD3G_REMBG_MODEL"):
        smoke(matting="rembg").resolved()
    onnx_path = tmp_path / "models" / "u2net.onnx"
    with pytest.raises(S.MissingModelError, match=str(onnx_path)):
        smoke(matting="rembg", rembg_model_path=str(onnx_path)).resolved()
    with pytest.raises(S.MissingModelError, match="does not exist"):
        S.RembgMatting(onnx_path)
    monkeypatch.setenv("DD3G_SDXL_PATH", str(missing))
    with pytest.raises(S.MissingModelError, match="model_index.json"):
        get_profile("full").rgba.resolved()


# --------------------------------------------------------------------------------------
# SDXL (tiny random pipeline saved to a temp dir) and rembg (stub ONNX)
# --------------------------------------------------------------------------------------


class DiscMatting:
    """A stand-in matte (a centred disc): random SDXL weights paint no object to cut out, and
    this keeps every sample so the accepted-sample path of the SDXL generator is exercised."""

    name = "disc"

    def describe(self):
        return {"name": self.name}

    def matte(self, rgb):
        h, w = rgb.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        alpha = (((yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2) <= (0.3 * h) ** 2).astype(np.uint8) * 255
        return S.MattingResult(np.dstack([rgb, alpha]), {"background_plain": True})


def test_sdxl_tiny_pipeline_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = build_tiny_sdxl(tmp_path / "models")
    prompts = tmp_path / "two.txt"
    prompts.write_text("# two prompts\na red apple\na blue teapot\n")
    cfg = S.RGBASynthesisConfig(
        generator="sdxl",
        matting="colorkey",
        sdxl_path=str(path),
        sdxl_size=32,
        sdxl_steps=2,
        resolution=16,
        samples_per_shard=2,
        num_shards=1,
        prompts_file=str(prompts),
        sdxl_batch_size=2,
    )
    backends = SynthesisBackends(cfg)
    gen = backends.generator
    a = gen.generate([11], ["x"])[0]
    b = gen.generate([11], ["x"])[0]
    c = gen.generate([12], ["x"])[0]
    assert a.rgb.shape == (32, 32, 3) and a.rgb.dtype == np.uint8
    assert np.array_equal(a.rgb, b.rgb) and not np.array_equal(a.rgb, c.rgb)  # one generator per seed
    # the configured colour-key matting: random weights paint no plain backdrop, so samples may be
    # rejected, but every attempt is accounted for and explained
    summary, hit = S.synthesize_shard(tmp_path / "data", cfg, 0, backends=backends)
    m = summary.manifest
    assert not hit and m["attempted"] == 2 and m["accepted"] + m["num_rejected"] == 2
    assert m["generator"]["prompt_template"] == cfg.prompt_template and m["generator"]["steps"] == 2
    for r in m["rejected"]:
        assert r["reasons"] and r["prompt"] in ("a red apple", "a blue teapot")
    assert S.synthesize_shard(tmp_path / "data", cfg, 0)[1]  # cache hit without loading SDXL again
    # accepted-sample records of the SDXL path (stand-in matte keeps both samples)
    backends2 = SynthesisBackends(cfg, generator=gen, matting=DiscMatting())
    summary2, _ = S.synthesize_shard(tmp_path / "data2", cfg, 0, backends=backends2)
    samples = list(iter_samples(summary2.directory))
    assert summary2.manifest["accepted"] == 2 and len(samples) == 2
    for s in samples:
        rec = s["json"]
        assert s["rgba.png"].shape == (16, 16, 4)
        assert rec["generator"] == "sdxl" and rec["full_prompt"] == cfg.prompt_template.format(prompt=rec["prompt"])
        assert (
            rec["generator_seed"] == rec["seed"] and rec["prompt"] == ["a red apple", "a blue teapot"][rec["seed"] % 2]
        )
        assert rec["generator_config"]["size"] == 32 and "matting_iou" not in rec


class WhiteBackdropGenerator(S.ProceduralGenerator):
    """Procedural objects on white, like SDXL prompted for a plain white background."""

    def generate_one(self, seed):
        from dd3g_core.render.views import composite_on_background

        img = super().generate_one(seed)
        return GeneratedImage(
            composite_on_background(img.true_rgba, (255, 255, 255)),
            {**img.record, "background_rgb": [255, 255, 255]},
            img.true_rgba,
        )


def test_rembg_stub_model_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv("U2NET_HOME", raising=False)
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "elsewhere"))  # the model is NOT under it
    onnx_path = build_stub_onnx(tmp_path / "weights" / "stub-u2net.onnx")
    monkeypatch.setenv("DD3G_REMBG_MODEL", str(onnx_path))
    cfg = smoke(matting="rembg", samples_per_shard=3, num_shards=1)
    gen = WhiteBackdropGenerator(resolution=cfg.render_resolution, num_gaussians=cfg.num_gaussians)
    backends = SynthesisBackends(cfg, generator=gen)
    summary, hit = S.synthesize_shard(tmp_path / "data", cfg, 0, backends=backends)
    assert os.environ["REMBG_HOME"] == str(tmp_path / "elsewhere") and "U2NET_HOME" not in os.environ
    m = summary.manifest
    assert not hit and m["attempted"] == 3 and m["matting_backend"]["name"] == "rembg"
    assert m["matting_backend"]["model"] == "stub-u2net.onnx"
    assert m["accepted"] >= 2 and m["matting_iou_mean"] > 0.6
    for s in iter_samples(summary.directory):
        assert s["json"]["matting"] == "rembg" and s["rgba.png"].shape == (32, 32, 4)
    # the model's identity, not its location, is part of the version
    moved = tmp_path / "other" / "copy.onnx"
    moved.parent.mkdir()
    moved.write_bytes(onnx_path.read_bytes())
    assert S.stage_version(cfg) == S.stage_version(cfg.replace(rembg_model_path=str(moved)))
