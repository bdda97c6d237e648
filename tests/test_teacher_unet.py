"""MultiViewUNet (ImageDream's multi-view U-Net, our code): state-dict fidelity and tiny-config behaviour."""

import json
from pathlib import Path

import pytest
import torch

from dd3g_core.teacher import MultiViewUNet, MultiViewUNetConfig
from dd3g_core.teacher.attention import CrossAttention, sdpa_heads
from dd3g_core.teacher.blocks import timestep_embedding
from dd3g_core.weights import (
    check_state_dict,
    diff_shapes,
    format_diff,
    load_unet_state_dict,
    read_state_dict_listing,
    state_dict_shapes,
)

LISTING = Path(__file__).parent / "data" / "imagedream_unet_state_dict.txt"  # copy of the shared reference
REAL_PARAMS = 941_672_900
B, F, H = 2, 5, 32  # 2 objects x (4 views + 1 image view), 32x32 pixels


@pytest.fixture(scope="module")
def reference_shapes():
    return read_state_dict_listing(LISTING)


@pytest.fixture(scope="module")
def real_meta():
    with torch.device("meta"):
        return MultiViewUNet("imagedream")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MultiViewUNet("tiny").eval()


def tiny_inputs(seed=1, text_tokens=3):
    cfg = MultiViewUNetConfig.preset("tiny")
    g = torch.Generator().manual_seed(seed)
    n = B * F
    return dict(
        x=torch.randn(n, 3, H, H, generator=g),
        timesteps=torch.full((n,), 500.0),
        context=torch.randn(n, text_tokens, cfg.context_dim, generator=g),
        camera=torch.randn(n, cfg.camera_dim, generator=g),
        num_frames=F,
        ip=torch.randn(n, 17, cfg.ip_embed_dim, generator=g),
        ip_img=torch.randn(B, 3, H, H, generator=g),
    )


# ----------------------------------------------------------------------------- real config


def test_real_state_dict_matches_reference_listing(real_meta, reference_shapes):
    ours = state_dict_shapes(real_meta.state_dict())
    missing, unexpected, mismatched = diff_shapes(reference_shapes, ours)
    if missing or unexpected or mismatched:
        print(format_diff(missing, unexpected, mismatched, limit=20))
    assert not missing and not unexpected and not mismatched
    assert len(ours) == len(reference_shapes) == 773


def test_real_state_dict_order_matches_checkpoint(real_meta, reference_shapes):
    # Not needed for loading; documents that the module tree mirrors the original construction order.
    assert list(real_meta.state_dict()) == list(reference_shapes)


def test_real_parameter_count(real_meta, reference_shapes):
    listed = sum(torch.Size(s).numel() for s in reference_shapes.values())
    header = LISTING.read_text().splitlines()[1]
    assert "773 tensors" in header and f"{REAL_PARAMS} parameters" in header
    assert listed == REAL_PARAMS
    assert sum(p.numel() for p in real_meta.parameters()) == REAL_PARAMS
    assert not list(real_meta.buffers())  # every state-dict entry is a parameter


def test_real_forward_shapes_on_meta(real_meta):
    # LGM's call with CFG (reference §2 table): 2 x 5 rows of 4x32x32 latents, 77 text tokens, CLIP ViT-H tokens.
    with torch.device("meta"):
        out = real_meta(
            torch.empty(10, 4, 32, 32),
            torch.empty(10),
            torch.empty(10, 77, 1024),
            camera=torch.empty(10, 16),
            num_frames=5,
            ip=torch.empty(10, 257, 1280),
            ip_img=torch.empty(2, 4, 32, 32),
        )
        ip_tokens = real_meta.image_embed(torch.empty(10, 257, 1280))
    assert out.shape == (10, 4, 32, 32)
    assert ip_tokens.shape == (10, 16, 1024)


def test_config_json_roundtrip(tmp_path):
    header = json.loads(LISTING.read_text().splitlines()[2].removeprefix("# config: "))
    as_in_repo = {"_class_name": "MultiViewUNetModel", "_diffusers_version": "0.25.0", **header}
    assert MultiViewUNetConfig.from_dict(as_in_repo) == MultiViewUNetConfig.preset("imagedream")
    for name in ("imagedream", "tiny"):
        cfg = MultiViewUNetConfig.preset(name)
        assert MultiViewUNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        cfg.save(tmp_path / "config.json")
        assert MultiViewUNetConfig.load(tmp_path / "config.json") == cfg
        with torch.device("meta"):
            assert MultiViewUNet.from_config(json.loads((tmp_path / "config.json").read_text())).config == cfg
    with pytest.raises(ValueError, match="unknown MultiViewUNetConfig keys"):
        MultiViewUNetConfig.from_dict({"model_chanels": 320})
    with pytest.raises(ValueError, match="unknown MultiViewUNet preset"):
        MultiViewUNetConfig.preset("huge")
    with pytest.raises(ValueError, match="norm_num_groups"):
        MultiViewUNetConfig(model_channels=48)
    with pytest.raises(ValueError, match="num_head_channels"):
        MultiViewUNetConfig(model_channels=64, num_head_channels=48)


# ----------------------------------------------------------------------------- state-dict loading


def test_load_state_dict_roundtrip_and_errors(tiny):
    inputs = tiny_inputs()
    torch.manual_seed(123)
    other = MultiViewUNet("tiny").eval()
    with torch.no_grad():
        assert not torch.allclose(other(**inputs), tiny(**inputs))
        load_unet_state_dict(other, tiny.state_dict())
        assert torch.equal(other(**inputs), tiny(**inputs))

    sd = dict(tiny.state_dict())
    missing = dict(sd)
    del missing["out.2.weight"]
    with pytest.raises(ValueError, match=r"1 missing key\(s\): out\.2\.weight"):
        load_unet_state_dict(other, missing)
    with pytest.raises(ValueError, match=r"unexpected key\(s\): label_emb\.0\.weight"):
        load_unet_state_dict(other, {**sd, "label_emb.0.weight": torch.zeros(3)})
    bad_shape = {**sd, "input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}
    with pytest.raises(ValueError, match=r"input_blocks\.0\.0\.weight: expected \[32, 3, 3, 3\], got \[32, 4, 3, 3\]"):
        load_unet_state_dict(other, bad_shape)
    with pytest.raises(ValueError, match="model.diffusion_model."):
        check_state_dict(other, {"model.diffusion_model." + k: v for k, v in sd.items()})
    with pytest.raises(ValueError, match="mapping"):
        check_state_dict(other, [1, 2])
    # Every tensor the wrong shape: the message counts them all but lists only the first few.
    wrong = {k: torch.zeros(*(d + 1 for d in v.shape)) for k, v in sd.items()}
    with pytest.raises(ValueError, match=r"\d+ shape mismatch\(es\): .*\(\+\d+ more\)"):
        check_state_dict(other, wrong)


def test_load_into_meta_model_with_assign(tiny):
    with torch.device("meta"):
        empty = MultiViewUNet("tiny")
    load_unet_state_dict(empty, tiny.state_dict(), assign=True)
    inputs = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(empty.eval()(**inputs), tiny(**inputs))


# ----------------------------------------------------------------------------- tiny forward behaviour


def test_tiny_forward_shapes(tiny):
    inputs = tiny_inputs()
    cfg = tiny.config
    with torch.no_grad():
        out = tiny(**inputs)
        ip_tokens = tiny.image_embed(inputs["ip"])
    assert out.shape == (B * F, 3, H, H) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert ip_tokens.shape == (B * F, cfg.ip_dim, cfg.context_dim)
    n_params = sum(p.numel() for p in tiny.parameters())
    assert 1_000_000 < n_params < 5_000_000, n_params


def test_cross_view_attention_mixes_views_within_an_object_only(tiny):
    inputs = tiny_inputs()
    perturbed = dict(inputs, x=inputs["x"].clone())
    perturbed["x"][0] += 1.0  # object 0, view 0
    with torch.no_grad():
        base, moved = tiny(**inputs), tiny(**perturbed)
    assert (moved[2] - base[2]).abs().max() > 1e-3  # object 0, view 2 sees view 0
    assert torch.allclose(moved[F:], base[F:], atol=1e-6)  # object 1 is untouched

    # With num_frames=1 every row is its own object: no mixing across rows.
    single = {k: v for k, v in inputs.items() if k not in ("num_frames", "ip_img")}
    single_perturbed = dict(single, x=perturbed["x"])
    with torch.no_grad():
        base1, moved1 = tiny(**single, num_frames=1), tiny(**single_perturbed, num_frames=1)
    assert (moved1[0] - base1[0]).abs().max() > 1e-3
    assert torch.allclose(moved1[1:], base1[1:], atol=1e-6)


def test_ip_img_replaces_the_last_view_out_of_place(tiny):
    inputs = tiny_inputs()
    x_before = inputs["x"].clone()
    other = dict(inputs, x=inputs["x"].clone())
    other["x"][F - 1 :: F] = torch.randn(B, 3, H, H)  # whatever is in the image-view rows is ignored
    manual = dict(inputs, x=inputs["x"].clone(), ip_img=None)
    manual["x"][F - 1 :: F] = inputs["ip_img"]
    with torch.no_grad():
        out = tiny(**inputs)
        assert torch.equal(inputs["x"], x_before)  # caller's tensor not written (reference §5 pitfall 8)
        assert torch.allclose(tiny(**other), out, atol=1e-6)
        assert torch.allclose(tiny(**manual), out, atol=1e-6)


def test_camera_ip_and_text_condition_the_output(tiny):
    inputs = tiny_inputs()
    with torch.no_grad():
        base = tiny(**inputs)
        cam = inputs["camera"].clone()
        cam[2] += 1.0
        assert (tiny(**dict(inputs, camera=cam))[2] - base[2]).abs().max() > 1e-4
        assert (tiny(**dict(inputs, ip=inputs["ip"] + 1.0)) - base).abs().max() > 1e-4
        assert (tiny(**dict(inputs, context=inputs["context"] + 1.0)) - base).abs().max() > 1e-4
        assert (tiny(**dict(inputs, camera=None)) - base).abs().max() > 1e-4
        # A scalar timestep broadcasts to every row.
        assert torch.equal(tiny(**dict(inputs, timesteps=torch.tensor(500.0))), base)


def test_no_text_context_is_one_zero_token(tiny):
    inputs = tiny_inputs()
    zero = dict(inputs, context=torch.zeros(B * F, 1, tiny.config.context_dim))
    with torch.no_grad():
        assert torch.equal(tiny(**dict(inputs, context=None)), tiny(**zero))


def test_deterministic(tiny):
    inputs = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(tiny(**inputs), tiny(**inputs))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = MultiViewUNet("tiny").train()
    out = model(**tiny_inputs())
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    zero_grad = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    assert not zero_grad, zero_grad
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bfloat16_forward_runs(tiny):
    model = MultiViewUNet(tiny.config)
    model.load_state_dict(tiny.state_dict())
    model = model.to(torch.bfloat16).eval()
    inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) else v for k, v in tiny_inputs().items()}
    with torch.no_grad():
        out = model(**inputs)
        ref = tiny(**tiny_inputs())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean() + 0.05


def test_bad_inputs_raise(tiny):
    inputs = tiny_inputs()
    cases = [
        (dict(num_frames=3), "whole number of objects"),
        (dict(ip_img=torch.zeros(B * F, 3, H, H)), "ip_img must be"),
        (dict(ip=None), "ip .* is required"),
        (dict(ip=torch.zeros(B * F, 17, 5)), "ip must be"),
        (dict(camera=torch.zeros(B * F, 12)), "camera must be"),
        (dict(context=torch.zeros(B * F, 3, 7)), "context must be"),
        (dict(timesteps=torch.zeros(3)), "timesteps must have shape"),
        (dict(x=torch.zeros(B * F, 4, H, H)), "x must be"),
        (dict(x=torch.zeros(B * F, 3, 28, 28), ip_img=None), "multiples of 8"),
        (dict(y=torch.zeros(B * F)), "not supported"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            tiny(**{**inputs, **change})


# ----------------------------------------------------------------------------- building blocks


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


def test_sdpa_heads_matches_explicit_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 4 * 8, generator=g) for n in (5, 7, 7))
    out = sdpa_heads(q, k, v, heads=4)
    split = lambda t: t.reshape(2, t.shape[1], 4, 8).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 8**0.5, dim=-1)
    ref = (w @ split(v)).transpose(1, 2).reshape(2, 5, 32)
    assert torch.allclose(out, ref, atol=1e-5)


def test_ip_branch_is_a_separate_weighted_softmax():
    torch.manual_seed(0)
    attn = CrossAttention(16, 12, heads=2, dim_head=8, ip_dim=3, ip_weight=0.5)
    x, text, ip = torch.randn(2, 6, 16), torch.randn(2, 4, 12), torch.randn(2, 3, 12)
    out = attn(x, torch.cat([text, ip], 1))
    q = attn.to_q(x)
    expected = sdpa_heads(q, attn.to_k(text), attn.to_v(text), 2) + 0.5 * sdpa_heads(
        q, attn.to_k_ip(ip), attn.to_v_ip(ip), 2
    )
    assert torch.allclose(out, attn.to_out(expected), atol=1e-6)


# ------------------------------------------------------------------------ position encoding (tiny_s2d)


def test_position_encoding_breaks_permutation_equivariance_only_when_on():
    """Without it, joint attention cannot tell positions apart (a spatial permutation applied to all
    views commutes with the transformer); with it, it can. The state dict is the same either way."""
    from dd3g_core.teacher.attention import SpatialTransformer3D, position_encoding_2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * 3, 32, 4, 4, generator=g)  # 2 objects x 3 views
    ctx = torch.randn(6, 2, 16, generator=g)
    perm = torch.randperm(16, generator=g)

    def permuted(t):
        return t.flatten(2)[:, :, perm].reshape(t.shape)

    outs = {}
    for pe in (False, True):
        torch.manual_seed(1)
        st = SpatialTransformer3D(32, 2, 16, 16, groups=8, position_encoding=pe).eval()
        with torch.no_grad():
            outs[pe] = (permuted(st(x, ctx, 3)), st(permuted(x), ctx, 3))
        keys = list(st.state_dict())
    assert torch.allclose(*outs[False], atol=1e-5)
    assert not torch.allclose(*outs[True], atol=1e-3)
    assert keys == list(SpatialTransformer3D(32, 2, 16, 16, groups=8).state_dict())
    enc = position_encoding_2d(4, 4, 32)
    assert enc.shape == (16, 32) and torch.unique(enc, dim=0).shape[0] == 16
    assert not MultiViewUNetConfig.preset("imagedream").position_encoding
    assert MultiViewUNetConfig.preset("tiny_s2d").position_encoding
