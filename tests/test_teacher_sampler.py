"""Deterministic DDIM sampler, the teacher interface and the tiny pixel-space teacher."""

import json

import pytest
import torch
from torch import nn

from dd3g_core.cameras import imagedream_camera_embedding
from dd3g_core.images import prepare_images
from dd3g_core.teacher import (
    Condition,
    MissingWeightsError,
    TinyImageEncoder,
    TinyImageEncoderConfig,
    TinyTeacher,
    default_tiny_teacher_path,
    draw_noise,
)
from dd3g_core.teacher import sampler as ddim
from dd3g_core.teacher.imagedream import RELEASE_SCHEDULER_CONFIG

B, V, F, R = 2, 4, 5, 32
STEPS = 3


@pytest.fixture(scope="module")
def teacher():
    return TinyTeacher(seed=0).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(7)
    rgba = torch.rand(B, 4, 64, 64, generator=g)  # any size: resized to 32 with antialiasing
    rgba[:, 3] = (rgba[:, 3] > 0.5).float()
    return rgba


@pytest.fixture(scope="module")
def noise(teacher):
    return teacher.draw_noise(B, seed=1)


@pytest.fixture(scope="module")
def reference(teacher, images, noise):
    return teacher.sample(images, noise, steps=STEPS, record_steps=(0, 1, STEPS))


def count_unet_calls(teacher):
    calls = []

    def hook(module, args, kwargs):
        calls.append({"rows": args[0].shape[0], **{k: kwargs.get(k) for k in ("camera", "ip", "ip_img", "context")}})

    return calls, teacher.unet.register_forward_pre_hook(hook, with_kwargs=True)


# ------------------------------------------------------------------------------------- noise


def test_draw_noise_is_explicit_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = draw_noise((B, F, 3, R, R), 5)
    assert torch.equal(a, draw_noise((B, F, 3, R, R), 5))
    assert not torch.equal(a, draw_noise((B, F, 3, R, R), 6))
    g = torch.Generator().manual_seed(5)
    assert torch.equal(draw_noise((B, F, 3, R, R), g), a)  # a generator continues its stream
    assert not torch.equal(draw_noise((B, F, 3, R, R), g), a)
    assert torch.equal(torch.get_rng_state(), state)
    assert draw_noise((2, 3), 0, dtype=torch.float16).dtype == torch.float16


# ------------------------------------------------------------------------------ determinism


def test_sample_shapes_and_bit_identical_repeat(teacher, images, noise, reference):
    assert reference.images.shape == (B, V, 3, R, R)
    assert reference.latents.shape == (B, F, 3, R, R)
    assert reference.images.min() >= 0 and reference.images.max() <= 1
    assert reference.timesteps.tolist() == [999, 666, 332]  # trailing spacing
    state = torch.get_rng_state()
    again = teacher.sample(images, noise, steps=STEPS)
    assert torch.equal(again.images, reference.images) and torch.equal(again.latents, reference.latents)
    assert torch.equal(torch.get_rng_state(), state)  # sampling never touches the global RNG
    other = teacher.sample(images, teacher.draw_noise(B, seed=2), steps=STEPS)
    assert (other.images - reference.images).abs().max() > 1e-3


def test_image_slot_noise_is_irrelevant(teacher, images, noise, reference):
    """Slot F-1 is overwritten by ip_img inside the U-Net: its noise cannot change the views."""
    other = noise.clone()
    other[:, -1] = torch.randn(other[:, -1].shape, generator=torch.Generator().manual_seed(9))
    assert torch.equal(teacher.sample(images, other, steps=STEPS).images, reference.images)
    with pytest.raises(ValueError, match="noise must be"):
        teacher.sample(images, noise[:, :, :2], steps=1)


def test_sample_accepts_a_precomputed_condition(teacher, images, noise, reference):
    cond = teacher.encode_condition(images)
    assert torch.equal(teacher.sample(cond, noise, steps=STEPS).images, reference.images)


def test_save_load_round_trip_gives_identical_samples(teacher, images, noise, reference, tmp_path):
    teacher.save_pretrained(tmp_path / "tiny")
    cfg = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert cfg["format"] == "dd3g.tiny_teacher" and cfg["scheduler"]["prediction_type"] == "v_prediction"
    loaded = TinyTeacher.from_pretrained(tmp_path / "tiny")
    assert torch.equal(loaded.sample(images, noise, steps=STEPS).images, reference.images)
    assert loaded.config_hash() == teacher.config_hash()
    assert not loaded.training


def test_config_hash_tracks_weights(teacher):
    other = TinyTeacher(seed=1)
    assert other.config_hash() != teacher.config_hash()
    assert TinyTeacher(seed=0).config_hash() == teacher.config_hash()  # seeded init is reproducible


def test_trajectory_recording(teacher, images, noise, reference):
    traj = reference.trajectory
    assert sorted(traj) == [0, 1, STEPS]
    assert all(x.shape == (B, F, 3, R, R) and x.device.type == "cpu" for x in traj.values())
    assert torch.equal(traj[0], noise) and torch.equal(traj[STEPS], reference.latents)
    with pytest.raises(ValueError, match="record_steps"):
        teacher.sample(images, noise, steps=STEPS, record_steps=(STEPS + 1,))


# ------------------------------------------------------------------------------ CFG batching


def test_cfg_uses_one_batched_forward_uncond_first(teacher, images, noise):
    calls, handle = count_unet_calls(teacher)
    try:
        teacher.sample(images, noise, steps=2, guidance=3.0)
    finally:
        handle.remove()
    assert len(calls) == 2 and all(c["rows"] == 2 * B * F for c in calls)
    ip_img, ip = calls[0]["ip_img"], calls[0]["ip"]
    assert ip_img.shape[0] == 2 * B and torch.all(ip_img[:B] == 0) and ip_img[B:].abs().sum() > 0
    assert torch.all(ip[: B * F] == 0) and ip[B * F :].abs().sum() > 0


def test_guidance_one_skips_uncond(teacher, images, noise):
    calls, handle = count_unet_calls(teacher)
    try:
        teacher.sample(images, noise, steps=2, guidance=1.0)
    finally:
        handle.remove()
    assert len(calls) == 2 and all(c["rows"] == B * F for c in calls)


def test_cameras_are_tiled_per_object(teacher, images, noise):
    """Rows are consecutive blocks of F views: every object gets [c0..c4] (reference B>1 bug)."""
    calls, handle = count_unet_calls(teacher)
    try:
        teacher.sample(images, noise, steps=1, guidance=2.0)
    finally:
        handle.remove()
    emb = teacher.cameras().embedding
    assert torch.equal(calls[0]["camera"].reshape(2 * B, F, 16), emb.expand(2 * B, F, 16))
    ctx = calls[0]["context"].reshape(2, B, F, *calls[0]["context"].shape[1:])
    assert torch.equal(ctx[1, 0, 0], ctx[1, 0, 4])  # one object's tokens over its views


def test_per_object_cameras_and_rotated_sets(teacher, images, noise):
    cams = teacher.cameras(azimuth_offset_deg=30.0)
    assert cams.embedding.shape == (F, 16) and cams.viewmats.shape == (V, 4, 4) and cams.Ks.shape == (V, 3, 3)
    assert torch.allclose(cams.embedding, imagedream_camera_embedding([30, 120, 210, 300], 0.0))
    per_object = torch.stack([teacher.cameras().embedding, cams.embedding])  # [B, F, 16]
    mixed = teacher.sample(images, noise, cameras=per_object, steps=2).images
    first = teacher.sample(images[:1], noise[:1], cameras=teacher.cameras(), steps=2).images
    assert torch.allclose(mixed[:1], first, atol=1e-5)  # batch composition only changes float rounding
    with pytest.raises(ValueError, match="camera embedding"):
        teacher.sample(images, noise, cameras=torch.zeros(V, 16), steps=1)


# ----------------------------------------------------------------------------- diffusion maths


class ConstantUNet(nn.Module):
    """Stands in for the U-Net: returns a fixed output (flattened rows), records nothing else."""

    def __init__(self, out):
        super().__init__()
        self.out = out
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, timesteps, **kwargs):
        return self.out.reshape(x.shape)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_predict_noise_converts_to_epsilon(prediction_type):
    t_obj = TinyTeacher(seed=0)
    t_obj.scheduler = ddim.make_scheduler({**dict(t_obj.scheduler.config), "prediction_type": prediction_type})
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(B, F, 3, R, R, generator=g), torch.randn(B, F, 3, R, R, generator=g)
    t = torch.tensor([100, 800])
    sched = t_obj.scheduler
    x_t = torch.stack([sched.add_noise(x0[i], eps[i], t[i : i + 1]) for i in range(B)])
    truth = {
        "v_prediction": torch.stack([sched.get_velocity(x0[i], eps[i], t[i : i + 1]) for i in range(B)]),
        "epsilon": eps,
        "sample": x0,
    }[prediction_type]
    t_obj.unet = ConstantUNet(truth)
    cond = Condition(torch.zeros(B, 2, 64), torch.zeros(B, 64, 64), torch.zeros(B, 3, R, R))
    got = t_obj.predict_noise(x_t, t, cond)
    assert torch.allclose(got, eps, atol=1e-4)
    # x_t with only the V generated views: a zero image slot is appended and dropped again
    # (every conversion is per slot, so the other slots are unaffected)
    t_obj.unet = ConstantUNet(torch.cat([truth[:, :V], torch.zeros_like(truth[:, :1])], 1))
    assert torch.allclose(t_obj.predict_noise(x_t[:, :V], t, cond), eps[:, :V], atol=1e-4)


def test_ddim_step_follows_the_equations():
    sched_cfg = dict(RELEASE_SCHEDULER_CONFIG)
    g = torch.Generator().manual_seed(0)
    n, e = torch.randn(1, F, 4, 8, 8, generator=g), torch.randn(1, F, 4, 8, 8, generator=g)
    x, traj, ts = ddim.ddim_sample(lambda x, t: e, sched_cfg, n, 2, record_steps=(1,))
    ac = ddim.make_scheduler(sched_cfg).alphas_cumprod
    assert ts.tolist() == [501, 1]  # leading spacing + steps_offset 1 (ImageDream, §3.4)
    x0 = (n - (1 - ac[501]).sqrt() * e) / ac[501].sqrt()
    x1 = ac[1].sqrt() * x0 + (1 - ac[1]).sqrt() * e
    assert torch.allclose(traj[1], x1, atol=1e-5)
    x0b = (x1 - (1 - ac[1]).sqrt() * e) / ac[1].sqrt()
    final = ac[0].sqrt() * x0b + (1 - ac[0]).sqrt() * e  # set_alpha_to_one False -> abar_0
    assert torch.allclose(x, final, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ddim.PREDICTION_TYPES)
def test_training_target_inverts(prediction_type):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, F, 3, 4, 4, generator=g), torch.randn(3, F, 3, 4, 4, generator=g)
    abar = torch.tensor([0.9, 0.5, 0.01]).reshape(-1, 1, 1, 1, 1)
    x_t = ddim.add_noise(x0, eps, abar)
    target = ddim.training_target(x0, eps, abar, prediction_type)
    assert torch.allclose(ddim.to_epsilon(target, x_t, abar, prediction_type), eps, atol=1e-4)
    assert torch.allclose(ddim.to_x0(target, x_t, abar, prediction_type), x0, atol=1e-3)


# ------------------------------------------------------------------------------ images / condition


def test_prepare_images_modes():
    rgba = torch.zeros(1, 4, 8, 8)
    rgba[0, 0, :4] = 1.0
    rgba[0, 3, :4] = 1.0  # red top half, transparent bottom half
    rgb = prepare_images(rgba, 8, background=(0.5, 0.5, 0.5))
    assert torch.equal(rgb[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(rgb[0, :, 7, 0], torch.tensor([0.5, 0.5, 0.5]))
    u8 = (rgba * 255).to(torch.uint8)
    assert torch.allclose(prepare_images(u8, 8), prepare_images(rgba, 8))
    gray = prepare_images(torch.full((1, 1, 8, 8), 0.25), 4)
    assert gray.shape == (1, 3, 4, 4) and torch.allclose(gray, torch.full_like(gray, 0.25))
    assert prepare_images(torch.rand(2, 2, 16, 16), 8).shape == (2, 3, 8, 8)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(4, 32, 32), "batch dimension"),
        (torch.rand(1, 4, 32, 48), "square"),
        (torch.rand(1, 32, 32, 4), "channels-last"),
        (torch.rand(1, 3, 32, 32) * 255, r"\[0, 1\]"),
        (torch.ones(1, 3, 32, 32, dtype=torch.int32), "uint8"),
    ],
)
def test_bad_images_are_rejected(teacher, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        teacher.encode_condition(bad)


def test_tiny_condition_shapes_and_gradients(teacher, images):
    cond = teacher.encode_condition(images)
    assert cond.context.shape == (B, 2, 64) and cond.ip.shape == (B, 64, 64) and cond.ip_img.shape == (B, 3, R, R)
    assert torch.allclose(cond.ip_img, prepare_images(images, R) * 2 - 1)
    (cond.ip.sum() + cond.context.sum()).backward()
    assert teacher.image_encoder.patchify.weight.grad is not None and teacher.null_context.grad is not None
    teacher.zero_grad(set_to_none=True)
    dropped = cond.drop(torch.tensor([True, False]))
    assert torch.all(dropped.ip[0] == 0) and torch.all(dropped.ip_img[0] == 0)
    assert torch.equal(dropped.ip[1], cond.ip[1]) and torch.equal(dropped.context, cond.context)
    latents = teacher.encode_latents(prepare_images(images, R))
    assert torch.allclose(teacher.decode_latents(latents), prepare_images(images, R), atol=1e-6)


def test_image_encoder_shapes():
    enc = TinyImageEncoder(TinyImageEncoderConfig(resolution=16, patch_size=4, embed_dim=24))
    assert enc(torch.rand(3, 3, 16, 16)).shape == (3, 16, 24)
    with pytest.raises(ValueError, match="expects"):
        enc(torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="ip_embed_dim"):
        TinyTeacher(encoder_config=TinyImageEncoderConfig(embed_dim=48))


# ------------------------------------------------------------------------------ checkpoint errors


def test_missing_checkpoint_names_files(tmp_path):
    with pytest.raises(MissingWeightsError, match="dd3g teacher pretrain"):
        TinyTeacher.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="missing model.safetensors"):
        TinyTeacher.from_pretrained(tmp_path / "half")


def test_default_path_points_into_assets():
    path = default_tiny_teacher_path(must_exist=False)
    assert path.parts[-3:] == ("assets", "models", "tiny-teacher") and (path.parents[2] / "dd3g_core").is_dir()
    if not (path / "model.safetensors").is_file():
        with pytest.raises(MissingWeightsError, match="dd3g teacher pretrain"):
            default_tiny_teacher_path()


def test_mismatched_checkpoint_lists_keys(teacher, tmp_path):
    from safetensors.torch import load_file, save_file

    teacher.save_pretrained(tmp_path / "t")
    sd = load_file(str(tmp_path / "t" / "model.safetensors"))
    sd.pop("unet.out.2.bias")
    sd["image_encoder.extra"] = torch.zeros(1)
    sd["null_context"] = torch.zeros(1, 3, 64)
    save_file(sd, str(tmp_path / "t" / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        TinyTeacher.from_pretrained(tmp_path / "t")
    msg = str(err.value)
    assert "unet.out.2.bias" in msg and "image_encoder.extra" in msg and "null_context: expected [1, 2, 64]" in msg
    with pytest.raises(ValueError, match="does not match"):
        teacher.save_pretrained(tmp_path / "u", state_dict=sd)
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    (tmp_path / "t" / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version=99"):
        TinyTeacher.from_pretrained(tmp_path / "t")
