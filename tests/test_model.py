"""PEPD: sizes of both presets, phase-1 initialisation from the teacher, progressive heads,
pixel-aligned Gaussians, save/load and refusal of foreign checkpoints."""

from pathlib import Path

import pytest
import torch

from dd3g_core.model import PEPD, ConfigMismatchError, PEPDConfig
from dd3g_core.teacher import TinyTeacher
from dd3g_core.weights import read_state_dict_listing, state_dict_shapes

LISTING = Path(__file__).parent / "data" / "imagedream_unet_state_dict.txt"


@pytest.fixture(scope="module")
def teacher():
    return TinyTeacher(seed=0).eval()


@pytest.fixture(scope="module")
def student(teacher):
    torch.manual_seed(0)
    m = PEPD("tiny")
    m.init_from_teacher(teacher.unet)
    return m.eval()


def inputs(teacher, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(b, 4, 64, 64, generator=g) * 255).to(torch.uint8)
    cams = teacher.cameras()
    return dict(
        noise=teacher.draw_noise(b, seed),
        camera_embedding=cams.embedding,
        condition=teacher.encode_condition(images),
        image=images,
        viewmats=cams.viewmats,
        Ks=cams.Ks,
        image_size=cams.resolution,
    )


def test_preset_sizes():
    tiny, full = PEPDConfig.preset("tiny"), PEPDConfig.preset("full")
    assert (tiny.feature_resolution, tiny.feature_channels, tiny.num_gaussians) == (8, 64, 4096)
    assert (full.feature_resolution, full.feature_channels, full.num_gaussians) == (16, 1280, 65536)
    assert full.num_image_tokens == 256 and tiny.num_image_tokens == 16
    with pytest.raises(ValueError, match="mu_block"):
        tiny.replace(mu_block=4, shape_block=3)
    with pytest.raises(ValueError, match="phase1_output_blocks"):
        tiny.replace(phase1_output_blocks=99)


def test_full_phase1_is_a_slice_of_the_imagedream_checkpoint():
    """Phase 1 of the full student loads from the real ImageDream U-Net: every key it keeps
    exists in the reference state-dict listing with the same shape."""
    ref = read_state_dict_listing(LISTING)
    m = PEPD("full", _meta=True)
    ours = state_dict_shapes(m.phase1.state_dict())
    assert ours and all(ref[k] == v for k, v in ours.items())
    dropped = set(ref) - set(ours)
    assert all(k.startswith(("output_blocks.", "out.")) for k in dropped)
    counts = m.num_parameters()
    assert counts["phase1"] > 500_000_000 and counts["phase2"] > 50_000_000


def test_forward_shapes_finite_and_teacher_init(teacher, student):
    out = student(**inputs(teacher))
    g = out.gaussians
    assert g.means.shape == (2, 4096, 3) and g.sh.shape == (2, 4096, 1, 3) and g.quats.shape == (2, 4096, 4)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert torch.isfinite(getattr(g, name)).all(), name
    sd_t = teacher.unet.state_dict()
    for k, v in student.phase1.state_dict().items():
        assert torch.equal(v, sd_t[k]), k
    assert student.num_parameters()["total"] == sum(p.numel() for p in student.parameters())


def test_initial_gaussians_are_pixel_aligned_on_the_centre_plane(teacher):
    """Zero-initialised heads: every view's Gaussians sit on the camera rays through the grid
    cell centres at depth = radius (the plane through the orbit centre)."""
    m = PEPD("tiny").eval()
    x = inputs(teacher, b=1)
    with torch.no_grad():
        out = m(**x)
    c = m.config
    means = out.gaussians.means[0].reshape(c.num_views, c.grid_resolution, c.grid_resolution, 3)
    assert torch.allclose(out["depth"], torch.full_like(out["depth"], c.radius))
    for v in range(c.num_views):
        cam = (x["viewmats"][v, :3, :3] @ means[v].reshape(-1, 3).T + x["viewmats"][v, :3, 3:]).T
        uv = (x["Ks"][v] @ cam.T).T
        uv = uv[:, :2] / uv[:, 2:]
        centres = (torch.arange(c.grid_resolution) + 0.5) * (x["image_size"] / c.grid_resolution)
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        assert torch.allclose(uv, torch.stack([xs, ys], -1).reshape(-1, 2), atol=1e-3)


def test_progressive_heads_read_geometry_before_appearance(teacher, student):
    """mu is read after block mu_block: changing a later block moves colours, not positions."""
    m = PEPD(student.config)
    m.load_state_dict(student.state_dict())
    for lin in m.heads.linears.values():  # non-zero heads so every attribute depends on its tokens
        torch.nn.init.normal_(lin.weight, std=0.05)
    m.eval()
    x = inputs(teacher)
    with torch.no_grad():
        a = m(**x).gaussians
        last = m.blocks[-1]
        torch.nn.init.normal_(last.mlp[2].weight, std=0.5)
        b = m(**x).gaussians
        assert torch.equal(a.means, b.means) and torch.equal(a.log_scales, b.log_scales)
        assert not torch.allclose(a.sh, b.sh)
        torch.nn.init.normal_(m.blocks[m.config.mu_block - 1].mlp[2].weight, std=0.5)
        c = m(**x).gaussians
        assert not torch.allclose(b.means, c.means)


def test_noise_changes_the_output_deterministically(teacher, student):
    m = PEPD(student.config)
    m.load_state_dict(student.state_dict())
    torch.nn.init.normal_(m.heads.linears["mu"].weight, std=0.05)
    m.eval()
    x = inputs(teacher)
    with torch.no_grad():
        a = m(**x).gaussians.means
        assert torch.equal(a, m(**x).gaussians.means)
        x["noise"] = teacher.draw_noise(2, 123)
        b = m(**x).gaussians.means
    assert not torch.allclose(a, b)


def test_save_and_load_roundtrip_and_foreign_checkpoints(tmp_path, teacher, student):
    path = student.save_pretrained(tmp_path / "pepd", extra={"teacher": "tiny"})
    again = student.save_pretrained(tmp_path / "again", extra={"teacher": "tiny"})
    for name in ("model.safetensors", "config.json"):  # byte-identical: the weights' sha256 is a DataVersion
        assert (path / name).read_bytes() == (again / name).read_bytes()
    loaded = PEPD.from_pretrained(path, expected=student.config)
    x = inputs(teacher)
    with torch.no_grad():
        assert torch.equal(student(**x).gaussians.means, loaded(**x).gaussians.means)
    cfg, meta = PEPD.read_config(path)
    assert cfg == student.config and meta["teacher"] == "tiny" and meta["parameters"]["total"] > 0
    other = student.config.replace(depth=5, shape_block=4)
    with pytest.raises(ConfigMismatchError, match="depth"):
        PEPD.from_pretrained(path, expected=other)
    # weights of another config under this config.json: the differing keys are listed
    PEPD(other).save_pretrained(tmp_path / "other")
    (tmp_path / "pepd" / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ConfigMismatchError, match="blocks.4"):
        PEPD.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        PEPD.from_pretrained(tmp_path / "nowhere")


def test_unet_forward_features_match_forward(teacher):
    """The features PEPD reads are the U-Net's own hidden state: all blocks + ``out`` == forward."""
    u = teacher.unet
    b, f = 1, 5
    x = torch.randn(b * f, 3, 32, 32)
    t = torch.full((b * f,), 500.0)
    cond = teacher.encode_condition(torch.rand(b, 4, 64, 64))
    cam = teacher.cameras().embedding
    kw = dict(
        context=cond.context.repeat_interleave(f, 0),
        camera=cam,
        num_frames=f,
        ip=cond.ip.repeat_interleave(f, 0),
        ip_img=cond.ip_img,
    )
    with torch.no_grad():
        full = u(x, t, **kw)
        feats = u.forward_features(x, t, **kw)
        assert torch.allclose(u.out(feats), full, atol=1e-6)
        assert u.forward_features(x, t, num_output_blocks=3, **kw).shape == (5, 64, 8, 8)
    with pytest.raises(ValueError, match="num_output_blocks"):
        u.forward_features(x, t, num_output_blocks=13, **kw)


def test_phase1_read_after_the_middle_block(teacher):
    """``phase1_output_blocks=0`` (the tiny profile's student): phase 1 keeps no decoder block and its
    features are the teacher U-Net's middle-block output (4x4, 64 channels), one token per 8x8 Gaussians."""
    cfg = PEPDConfig.preset("tiny").replace(phase1_output_blocks=0, gaussian_grid=8)
    assert (cfg.feature_resolution, cfg.feature_channels, cfg.grid_resolution, cfg.num_gaussians) == (4, 64, 32, 4096)
    torch.manual_seed(0)
    m = PEPD(cfg)
    m.init_from_teacher(teacher.unet)
    assert len(m.phase1.output_blocks) == 0
    x = inputs(teacher)
    feats = []
    hook = m.feature_proj.register_forward_pre_hook(lambda mod, args: feats.append(args[0]))
    with torch.no_grad():
        out = m(**x).gaussians
        b, f = x["noise"].shape[:2]
        cond = x["condition"]
        want = teacher.unet.forward_features(
            x["noise"].reshape(b * f, *x["noise"].shape[2:]),
            torch.full((b * f,), float(cfg.phase1_timestep)),
            context=cond.context.repeat_interleave(f, 0),
            camera=x["camera_embedding"].repeat(b, 1),
            num_frames=f,
            ip=cond.ip.repeat_interleave(f, 0),
            ip_img=cond.ip_img,
            num_output_blocks=0,
        )  # [B*F, 64, 4, 4]
    hook.remove()
    want = want.reshape(b, f, 64, 16)[:, : cfg.num_views].transpose(-1, -2)  # [B, V, 16 tokens, 64]
    assert torch.allclose(feats[0], want, atol=1e-5)
    assert out.means.shape == (2, 4096, 3) and torch.isfinite(out.means).all()
    with pytest.raises(ValueError, match=r"phase1_output_blocks must be in \[0, 12\], got -1"):
        cfg.replace(phase1_output_blocks=-1)


def test_phase1_follows_the_teacher_options_s2d_latents_and_image_concat():
    """A teacher on space-to-depth latents with the image concatenated to every view: the student
    takes its U-Net config, N of its latent shape, and still emits one Gaussian per 32 px pixel."""
    from dd3g_core.teacher import MultiViewUNetConfig

    ucfg = MultiViewUNetConfig.preset("tiny_s2d").replace(
        model_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        num_head_channels=16,
        concat_image=True,
        norm_num_groups=8,
    )
    t = TinyTeacher(unet_config=ucfg, latent_patch=2, seed=0).eval()
    cfg = PEPDConfig(unet=ucfg, latent_resolution=16, phase1_output_blocks=1, gaussian_grid=4)
    assert cfg.feature_resolution == 8  # 8x8 tokens per view x 4x4 Gaussians = 32x32
    torch.manual_seed(0)
    m = PEPD(cfg)
    m.init_from_teacher(t.unet)
    assert torch.equal(m.phase1.input_blocks[0][0].weight, t.unet.input_blocks[0][0].weight)
    assert m.phase1.input_blocks[0][0].weight.shape[1] == 24  # 12 latent + 12 image channels
    x = inputs(t)
    assert x["noise"].shape == (2, 5, 12, 16, 16)
    feats = []
    hook = m.feature_proj.register_forward_pre_hook(lambda mod, args: feats.append(args[0]))
    with torch.no_grad():
        out = m(**x)
        m(**{**x, "condition": t.encode_condition(torch.zeros(2, 4, 64, 64))})
    hook.remove()
    assert out.gaussians.means.shape == (2, cfg.num_gaussians, 3) and cfg.num_gaussians == 4 * 32 * 32
    assert torch.isfinite(out.gaussians.means).all()
    assert feats[0].shape[2] == 8 * 8 and not torch.allclose(feats[0], feats[1])  # the image reaches phase 1


def test_the_seen_view_starts_from_the_input_pixels(teacher):
    """``input_view``: an untrained model's Gaussians of the seen view carry II's colour (resized to the
    view's grid through premultiplied colour, so the transparent background's black does not bleed in);
    opacity keeps the heads' start in every view; rendered opaque from II's camera, the seen view's
    Gaussians show the input."""
    from dd3g_core.gaussians import Gaussians
    from dd3g_core.render import render

    m = PEPD("tiny").eval()
    c = m.config
    assert c.input_view == 0
    x = inputs(teacher, b=1)
    image = torch.zeros(1, 4, 64, 64)
    image[:, :3, 16:48, 16:48] = torch.tensor([0.9, 0.2, 0.1]).reshape(1, 3, 1, 1)
    image[:, 3, 16:48, 16:48] = 1.0  # an opaque red square on a transparent black background
    x["image"] = image
    with torch.no_grad():
        g = m(**x).gaussians
    n, r = c.grid_resolution**2, c.grid_resolution
    opacity = torch.sigmoid(g.opacity_logits[0]).reshape(c.num_views, r, r)
    rgb = (g.sh[0, :, 0] * 0.28209479177387814 + 0.5).reshape(c.num_views, r, r, 3)
    assert torch.allclose(rgb[0][8:24, 8:24], torch.tensor([0.9, 0.2, 0.1]), atol=1e-4)  # edges included
    assert torch.allclose(rgb[1:], torch.tensor(0.5))  # the other views: the heads' grey
    assert torch.allclose(opacity, torch.tensor(c.init_opacity), atol=1e-6)
    opaque = 8.0 * (image[:, 3, ::2, ::2].reshape(1, n) * 2 - 1)  # logits: opaque on the square, else clear
    own = Gaussians(g.means[:, :n], g.quats[:, :n], g.log_scales[:, :n], opaque, g.sh[:, :n])
    seen = render(own, x["viewmats"][:1][None], x["Ks"][:1][None], 32, 32, background=torch.ones(3))
    red, white = seen.rgb[0, 0, 10:22, 10:22], seen.rgb[0, 0, :4, :4]
    assert (red[..., 0] > 0.8).all() and (red[..., 1:] < 0.35).all()  # the square, seen from II's camera
    assert (white > 0.9).all()
    with pytest.raises(ValueError, match="input_view"):
        PEPDConfig(input_view=4)


def test_seen_refine_starts_as_the_model_without_it_and_reaches_only_the_seen_view(teacher):
    """``seen_refine``: a small CNN on II's cells adds residual logits to the seen view alone. Its last layer
    starts at zero, so the untrained output is the plain model's; off (0), it is not in the config dict."""
    assert "seen_refine" not in PEPDConfig.preset("tiny").to_dict()
    cfg = PEPDConfig.preset("tiny").replace(seen_refine=8)
    assert PEPDConfig.from_dict(cfg.to_dict()) == cfg
    torch.manual_seed(0)
    plain = PEPD("tiny").eval()
    refined = PEPD(cfg).eval()
    missing = refined.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("seen_refine.") for k in missing)
    x = inputs(teacher, b=1)
    with torch.no_grad():
        a, b = plain(**x).gaussians, refined(**x).gaussians
        assert torch.equal(a.sh, b.sh) and torch.equal(a.opacity_logits, b.opacity_logits)
        torch.nn.init.normal_(refined.seen_refine[-1].weight, std=0.5)  # as if trained
        c = refined(**x).gaussians
    n = cfg.grid_resolution**2
    v = cfg.input_view
    changed = (c.sh - a.sh).abs().flatten(2).amax(-1) + (c.opacity_logits - a.opacity_logits).abs()  # [1, V*n]
    changed = changed + (c.log_scales - a.log_scales).abs().amax(-1)
    assert changed[0, v * n : (v + 1) * n].min() > 0  # every cell of the seen view
    assert torch.equal(torch.cat([changed[0, : v * n], changed[0, (v + 1) * n :]]), torch.zeros(3 * n))
    assert torch.equal(c.means, a.means) and torch.equal(c.quats, a.quats)  # geometry is the tokens'
    with pytest.raises(ValueError, match="seen_refine"):
        PEPDConfig(seen_refine=8, input_view=-1)
