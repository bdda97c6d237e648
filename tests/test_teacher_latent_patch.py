"""TinyTeacher with ``latent_patch`` > 1: space-to-depth pixel latents (preset ``tiny_s2d``)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.nn import functional as F

from dd3g_core.teacher import MultiViewUNet, MultiViewUNetConfig
from dd3g_core.teacher import sampler as ddim
from dd3g_core.teacher.attention import SpatialTransformer3D
from dd3g_core.teacher.tiny import TinyTeacher
from dd3g_core.teacher.training.train import TeacherTrainConfig, build_teacher, export_teacher, pretrain_tiny_teacher

os.environ.setdefault("OMP_NUM_THREADS", "1")

# a small U-Net on 12 x 16x16 latents (2x2 space-to-depth of 3 x 32x32 pixels)
SMALL_S2D = {
    "image_size": 16,
    "in_channels": 12,
    "out_channels": 12,
    "model_channels": 16,
    "channel_mult": (1, 2),
    "attention_resolutions": (1, 2),
    "num_res_blocks": 1,
    "num_head_channels": 16,
    "context_dim": 32,
    "resampler_depth": 1,
    "norm_num_groups": 8,
}


@pytest.fixture(scope="module")
def teacher():
    cfg = MultiViewUNetConfig.preset("tiny").replace(**SMALL_S2D)
    return TinyTeacher(unet_config=cfg, latent_patch=2, seed=0).eval()


def test_latents_are_a_permutation_of_pixels(teacher):
    assert teacher.latent_shape() == (5, 12, 16, 16)
    rgb = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lat = teacher.encode_latents(rgb)
    assert lat.shape == (3, 12, 16, 16)
    # every latent value is one pixel value (2x - 1), each pixel exactly once
    assert torch.equal(lat.flatten(1).sort(dim=1).values, (rgb * 2 - 1).flatten(1).sort(dim=1).values)
    assert torch.equal(lat[:, :4, 0, 0].reshape(3, 2, 2), rgb[:, 0, :2, :2] * 2 - 1)  # channel c*4 + 2i + j
    assert torch.allclose(teacher.decode_latents(lat), rgb, atol=1e-6)


def test_forward_process_commutes_with_space_to_depth(teacher):
    """Noising the s2d latents == s2d of noised pixels: the diffusion process is the pixel one."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    eps = torch.randn(2, 3, 32, 32, generator=g)
    abar = ddim.alpha_bar(teacher.scheduler, torch.tensor([100, 900]))
    pix = ddim.add_noise(x0[:, None], eps[:, None], abar)[:, 0]
    lat = ddim.add_noise(F.pixel_unshuffle(x0, 2)[:, None], F.pixel_unshuffle(eps, 2)[:, None], abar)[:, 0]
    assert torch.allclose(F.pixel_unshuffle(pix, 2), lat, atol=1e-6)


def test_samples_decode_to_pixels_and_round_trip(teacher, tmp_path):
    images = torch.rand(2, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    noise = teacher.draw_noise(2, seed=3)
    assert noise.shape == (2, 5, 12, 16, 16)
    out = teacher.sample(images, noise, steps=2)
    assert out.images.shape == (2, 4, 3, 32, 32) and out.latents.shape == (2, 5, 12, 16, 16)
    path = teacher.save_pretrained(tmp_path / "t")
    assert json.loads((path / "config.json").read_text())["latent_patch"] == 2
    again = TinyTeacher.from_pretrained(path).sample(images, noise, steps=2)
    assert torch.equal(out.images, again.images)


def test_plain_pixel_config_has_no_patch_key():
    """latent_patch 1 leaves config.json (and so every config hash of existing teachers) as it was."""
    cfg = TinyTeacher(seed=0).to_config()
    assert "latent_patch" not in cfg
    assert TinyTeacher.from_config(cfg, _meta=True).latent_patch == 1


def test_channel_mismatch_is_explained():
    with pytest.raises(ValueError, match="channels must be 12"):
        TinyTeacher(unet_config="tiny", latent_patch=2)
    with pytest.raises(ValueError, match="divide the layout resolution"):
        TinyTeacher(unet_config="tiny", latent_patch=3)


def test_tiny_s2d_preset_attends_jointly_at_every_level():
    cfg = TeacherTrainConfig.preset("tiny_s2d")
    assert cfg.latent_patch == 2
    ucfg = cfg.unet_config()
    with torch.device("meta"):
        unet = MultiViewUNet(ucfg)
    transformers = [m for m in unet.modules() if isinstance(m, SpatialTransformer3D)]
    # 2 per encoder level x 3 levels + middle + 3 per decoder level x 3 levels
    assert len(transformers) == 3 * ucfg.num_res_blocks + 1 + 3 * (ucfg.num_res_blocks + 1)
    assert ucfg.in_channels == ucfg.out_channels == 3 * cfg.latent_patch**2


def test_training_and_export_with_space_to_depth(tmp_path):
    base = TeacherTrainConfig.preset("smoke")
    cfg = TeacherTrainConfig.preset(
        "smoke",
        latent_patch=2,
        unet_overrides={**dict(base.unet_overrides), "image_size": 16, "in_channels": 12, "out_channels": 12},
        max_steps=2,
        num_objects=4,
        data_dir=str(tmp_path / "data"),
    )
    assert build_teacher(cfg).latent_shape() == (5, 12, 16, 16)
    res = pretrain_tiny_teacher(cfg, tmp_path / "run")
    assert res.step == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    exported = TinyTeacher.from_pretrained(export_teacher(res.checkpoint, tmp_path / "export"))
    assert exported.latent_patch == 2
    out = exported.sample(torch.rand(1, 4, 64, 64), exported.draw_noise(1, seed=0), steps=2)
    assert out.images.shape == (1, 4, 3, 32, 32) and torch.isfinite(out.images).all()
