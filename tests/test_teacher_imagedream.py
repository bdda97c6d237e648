"""ImageDreamTeacher on a tiny random diffusers folder written by the test (stock classes + our U-Net)."""

import shutil
from pathlib import Path

import pytest
import torch

from dd3g_core.cameras import ViewLayout
from dd3g_core.images import prepare_images
from dd3g_core.teacher import (
    IMAGEDREAM_REPO,
    ImageDreamTeacher,
    MissingWeightsError,
    MultiViewUNet,
    TeacherChangedError,
    describe_teacher_folder,
    load_teacher,
)
from dd3g_core.teacher.imagedream import check_imagedream_folder

from stand_ins import TEXT_DIM, VISION_DIM, tiny_unet_config, write_tiny_imagedream, write_unet

LAYOUT = ViewLayout(resolution=64)  # VAE /4 -> 16x16 latents (the real model: 256 px, /8 -> 32x32)
B, F, LAT = 2, 5, 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_imagedream(tmp_path_factory.mktemp("imagedream") / "imagedream-ipmv-diffusers")


@pytest.fixture(scope="module")
def teacher(folder):
    return ImageDreamTeacher.from_pretrained(folder, layout=LAYOUT)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(3)
    rgba = torch.rand(B, 4, 96, 96, generator=g)
    rgba[:, 3] = (rgba[:, 3] > 0.3).float()
    return rgba


@pytest.fixture(scope="module")
def noise(teacher):
    return teacher.draw_noise(B, seed=11)


@pytest.fixture(scope="module")
def reference(teacher, images, noise):
    return teacher.sample(images, noise, steps=3, guidance=5.0, record_steps=(0, 2))


# ----------------------------------------------------------------------------------- sampling


def test_end_to_end_shapes(teacher, reference):
    assert teacher.latent_shape() == (F, 4, LAT, LAT)
    assert reference.images.shape == (B, 4, 3, 64, 64) and reference.latents.shape == (B, F, 4, LAT, LAT)
    assert reference.images.min() >= 0 and reference.images.max() <= 1
    assert reference.timesteps.tolist() == [667, 334, 1]  # leading + steps_offset 1 (reference §3.4)
    assert sorted(reference.trajectory) == [0, 2] and reference.trajectory[2].shape == (B, F, 4, LAT, LAT)
    assert teacher.prediction_type == "epsilon" and not any(p.requires_grad for p in teacher.parameters())


def test_bit_identical_repeat_and_fresh_load(folder, teacher, images, noise, reference):
    again = teacher.sample(images, noise, steps=3, guidance=5.0)
    assert torch.equal(again.images, reference.images) and torch.equal(again.latents, reference.latents)
    fresh = ImageDreamTeacher.from_pretrained(folder, layout=LAYOUT)
    assert torch.equal(fresh.sample(images, noise, steps=3, guidance=5.0).images, reference.images)
    assert fresh.config_hash() == teacher.config_hash()
    other = teacher.sample(images, teacher.draw_noise(B, seed=12), steps=3, guidance=5.0)
    assert (other.latents - reference.latents).abs().max() > 1e-3


def test_condition_follows_the_reference(teacher, images):
    cond = teacher.encode_condition(images)
    assert cond.context.shape == (B, 77, TEXT_DIM) and cond.uncond_context is None  # empty prompt for both
    assert cond.ip.shape == (B, 17, VISION_DIM) and cond.ip_img.shape == (B, 4, LAT, LAT)
    rgb = prepare_images(images, 96)  # composited on white at full size
    u8 = (rgb * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pixels = teacher.feature_extractor(images=list(u8), return_tensors="pt").pixel_values
    hidden = teacher.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert torch.allclose(cond.ip, hidden[-2]) and not torch.allclose(cond.ip, hidden[-1])
    x = prepare_images(images, 64) * 2 - 1
    mean = teacher.vae.encode(x).latent_dist.mean * 0.18215  # posterior mean, no sampling
    assert torch.allclose(cond.ip_img, mean, atol=1e-5)
    ids = teacher.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.allclose(cond.context[1], teacher.text_encoder(ids)[0][0])
    assert teacher.encode_condition(images, negative_prompt="ugly").uncond_context.shape == (B, 77, TEXT_DIM)


def test_cameras_put_the_input_view_first(teacher):
    cams = teacher.cameras()
    az90 = torch.tensor([0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1.0])  # reference §3.3, az 90 = LGM front
    assert torch.allclose(cams.embedding[0], az90, atol=1e-6) and torch.all(cams.embedding[4] == 0)
    assert cams.azimuths_deg == (0.0, 90.0, 180.0, 270.0) and cams.viewmats.shape == (4, 4, 4)


def test_latent_round_trip_and_predict_noise(teacher, images, noise):
    x = prepare_images(images, 64)
    lat = teacher.encode_latents(x)
    assert lat.shape == (B, 4, LAT, LAT) and teacher.decode_latents(lat).shape == (B, 3, 64, 64)
    renders = x.clone().requires_grad_(True)  # SDS: gradients flow to the renders through the VAE encoder
    teacher.encode_latents(renders).sum().backward()
    assert renders.grad is not None and renders.grad.abs().sum() > 0
    cond = teacher.encode_condition(images)
    eps = teacher.predict_noise(noise[:, :4], torch.tensor([10, 900]), cond, guidance=5.0)
    assert eps.shape == (B, 4, 4, LAT, LAT) and torch.isfinite(eps).all()
    direct = teacher.model_output(noise, torch.tensor([10, 900]), cond, guidance=5.0)
    assert torch.allclose(eps, direct[:, :4], atol=1e-5)  # epsilon model: output is eps already


# ----------------------------------------------------------------------------------- errors


def test_missing_folder_names_the_repo(tmp_path):
    with pytest.raises(MissingWeightsError, match=IMAGEDREAM_REPO):
        ImageDreamTeacher.from_pretrained(tmp_path / "absent")


def test_partial_folder_lists_missing_files(folder, tmp_path):
    part = Path(shutil.copytree(folder, tmp_path / "partial"))
    (part / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(part / "tokenizer")
    (part / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(MissingWeightsError) as err:
        ImageDreamTeacher.from_pretrained(part)
    msg = str(err.value)
    for name in (
        "unet/diffusion_pytorch_model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
        IMAGEDREAM_REPO,
    ):
        assert name in msg
    for present in ("vae/config.json", "text_encoder/model.safetensors", "model_index.json"):
        assert present not in msg


def test_mismatched_unet_state_dict_is_listed(folder, tmp_path):
    bad = Path(shutil.copytree(folder, tmp_path / "bad"))
    cfg = tiny_unet_config()
    with torch.device("meta"):
        shapes = MultiViewUNet(cfg).state_dict()
    sd = {k: torch.zeros(v.shape) for k, v in shapes.items()}
    sd.pop("out.2.weight")
    sd["time_embed.0.weight"] = torch.zeros(3, 3)
    sd["model.diffusion_model.extra"] = torch.zeros(1)
    write_unet(bad / "unet", cfg, sd)
    with pytest.raises(ValueError) as err:
        ImageDreamTeacher.from_pretrained(bad, layout=LAYOUT)
    msg = str(err.value)
    assert "out.2.weight" in msg and "time_embed.0.weight: expected" in msg and "model.diffusion_model." in msg
    # the teacher asset's check finds the same from the safetensors header, without loading the weights
    with pytest.raises(ValueError) as err:
        check_imagedream_folder(bad)
    msg = str(err.value)
    assert "diffusion_pytorch_model.safetensors does not match" in msg and "out.2.weight" in msg


def test_folder_check_passes_a_good_folder_and_names_bad_files(folder, tmp_path):
    info = check_imagedream_folder(folder)
    assert info["unet"] == tiny_unet_config().to_dict() and info["unet_parameters"] > 0
    record = describe_teacher_folder(folder, kind="imagedream")
    assert record["kind"] == "imagedream" and len(record["content_hash"]) == 64 and record["files"] >= 12
    assert describe_teacher_folder(folder)["content_hash"] == record["content_hash"]  # stable
    bad = Path(shutil.copytree(folder, tmp_path / "json"))
    (bad / "vae" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="vae/config.json is not valid JSON"):
        check_imagedream_folder(bad)
    bad = Path(shutil.copytree(folder, tmp_path / "trunc"))
    weights = bad / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        check_imagedream_folder(bad)
    changed = Path(shutil.copytree(folder, tmp_path / "changed"))
    (changed / "scheduler" / "scheduler_config.json").write_text(
        (folder / "scheduler" / "scheduler_config.json").read_text() + " "
    )
    with pytest.raises(TeacherChangedError, match="changed since it was recorded"):
        load_teacher(changed, content_hash=record["content_hash"])


def test_incompatible_components_are_named(folder, tmp_path):
    bad = Path(shutil.copytree(folder, tmp_path / "ctx"))
    write_unet(bad / "unet", tiny_unet_config().replace(context_dim=64))
    with pytest.raises(ValueError, match="context_dim = 64 but text encoder hidden_size = 32"):
        ImageDreamTeacher.from_pretrained(bad, layout=LAYOUT)


def test_bad_images(teacher):
    with pytest.raises(ValueError, match="square"):
        teacher.encode_condition(torch.rand(1, 4, 64, 80))
    with pytest.raises(ValueError, match="channels"):
        teacher.encode_condition(torch.rand(1, 5, 64, 64))
