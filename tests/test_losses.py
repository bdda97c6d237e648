"""The joint objective: each term against its equation."""

import pytest
import torch

from dd3g_core.distill.losses import (
    NonFiniteLossError,
    alpha_from_background,
    explicit_supervision_loss,
    implicit_verification_loss,
    ramp_weight,
    sample_timesteps,
)
from dd3g_core.teacher import TinyTeacher
from dd3g_core.teacher import sampler as ddim


@pytest.fixture(scope="module")
def teacher():
    t = TinyTeacher(seed=0).eval()
    t.requires_grad_(False)
    return t


def test_explicit_supervision_terms():
    g = torch.Generator().manual_seed(0)
    oi = torch.rand(2, 4, 3, 8, 8, generator=g)
    render = oi.permute(0, 1, 3, 4, 2).clone()
    alpha = torch.rand(2, 4, 8, 8, 1, generator=g)
    t = explicit_supervision_loss(render, alpha, oi, alpha.permute(0, 1, 4, 2, 3), alpha_weight=0.5)
    assert t["rgb"] == 0 and t["alpha"] == 0 and t["total"] == 0
    t = explicit_supervision_loss(
        render + 0.1,
        alpha,
        oi,
        torch.zeros_like(alpha.permute(0, 1, 4, 2, 3)),
        alpha_weight=0.5,
        perceptual=lambda x, y: (x - y).abs().mean(),
        perceptual_weight=2.0,
    )
    assert torch.isclose(t["rgb"], torch.tensor(0.01), atol=1e-6)
    assert torch.isclose(t["alpha"], alpha.pow(2).mean())
    assert torch.isclose(t["perceptual"], torch.tensor(0.1), atol=1e-6)
    assert torch.isclose(t["total"], t["rgb"] + 0.5 * t["alpha"] + 2.0 * t["perceptual"])
    with pytest.raises(ValueError, match="differ"):
        explicit_supervision_loss(render[:, :, :4], alpha, oi)


def test_alpha_from_white_background():
    v = torch.ones(1, 1, 3, 2, 2)
    v[..., 0, 0] = torch.tensor([0.0, 1.0, 1.0])  # far from white: opaque
    v[..., 0, 1] = torch.tensor([0.96, 1.0, 1.0])  # half the softness away
    a = alpha_from_background(v, softness=0.08)
    assert a[0, 0, 0, 0, 0] == 1 and torch.isclose(a[0, 0, 0, 0, 1], torch.tensor(0.5)) and a[0, 0, 0, 1, 1] == 0


def test_implicit_verification_gradient_is_the_sds_formula(teacher):
    """d L_imp / d renders = w(t) (eps_hat - eps) / numel * d x0 / d renders (tiny: x0 = 2r - 1)."""
    g = torch.Generator().manual_seed(1)
    b, v = 2, 4
    renders = torch.rand(b, v, 3, 32, 32, generator=g).requires_grad_(True)
    cond = teacher.encode_condition(torch.rand(b, 4, 64, 64, generator=g))
    cams = teacher.cameras(15.0, 5.0)
    eps = torch.randn(b, v, 3, 32, 32, generator=g)
    t = torch.tensor([100, 800])
    out = implicit_verification_loss(teacher, renders, cond, cams.embedding, t, eps, weighting="sds")
    out["sds"].backward()
    x0 = renders.detach() * 2 - 1
    abar = ddim.alpha_bar(teacher.scheduler, t)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    with torch.no_grad():
        eps_hat = teacher.predict_noise(x_t, t, cond, cams.embedding)
    expected = (1 - abar) * (eps_hat - eps) / x0.numel() * 2.0
    assert torch.allclose(renders.grad, expected, atol=1e-7, rtol=1e-4)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is never trained
    assert torch.isclose(out["grad_norm"], ((1 - abar) * (eps_hat - eps)).pow(2).mean().sqrt(), rtol=1e-4)
    with pytest.raises(ValueError, match="weighting"):
        implicit_verification_loss(teacher, renders, cond, cams.embedding, t, eps, weighting="bad")


def test_ramp_and_timesteps():
    assert [ramp_weight(s, 10, 20) for s in (0, 9, 10, 15, 20, 99)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    assert ramp_weight(5, 5, 5) == 1.0
    with pytest.raises(ValueError):
        ramp_weight(0, 10, 5)
    t = sample_timesteps(1000, 1000, (0.02, 0.98), torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() < 980


def test_non_finite_error_names_the_batch():
    e = NonFiniteLossError({"total": float("nan"), "exp_rgb": 0.1}, ["a_d00", "b_d01"], step=7)
    assert "step 7" in str(e) and "a_d00" in str(e) and "total" in str(e) and "exp_rgb" not in str(e)


def test_perceptual_loss_from_local_weights(tmp_path):
    from safetensors.torch import save_file

    from dd3g_core.distill.perceptual import PerceptualLoss, vgg16_features

    torch.manual_seed(0)
    feats = vgg16_features()
    save_file(
        {f"features.{k}": v for k, v in feats.state_dict().items()} | {"lin0.weight": torch.full((1, 64, 1, 1), 2.0)},
        str(tmp_path / "vgg.safetensors"),
    )
    loss = PerceptualLoss.from_file(tmp_path / "vgg.safetensors")
    assert torch.equal(loss.features[0].weight, feats[0].weight) and loss.lin[0].mean() == 2.0
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 32, 32)
    assert loss(y, y).abs() < 1e-6
    d = loss(x, y)
    d.backward()
    assert d > 0 and x.grad.abs().sum() > 0
    save_file({"features.0.weight": feats[0].weight}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="lacks VGG16"):
        PerceptualLoss.from_file(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="perceptual_weight=0"):
        PerceptualLoss.from_file(tmp_path / "none.safetensors")
