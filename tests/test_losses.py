"""The joint objective: each term against its equation."""

import pytest
import torch

from dd3g_core.distill.losses import (
    NonFiniteLossError,
    alpha_from_background,
    explicit_supervision_loss,
    implicit_verification_loss,
    opacity_decision_loss,
    ramp_weight,
    recomposite,
    sample_timesteps,
    surface_consistency_loss,
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


def test_view_weights_scale_each_views_explicit_terms():
    """sum_v w_v L_v / V: all ones is the plain mean; the seen view's weight scales only its own error."""
    g = torch.Generator().manual_seed(1)
    oi = torch.rand(2, 4, 3, 8, 8, generator=g)
    render = torch.rand(2, 4, 8, 8, 3, generator=g)
    alpha = torch.rand(2, 4, 8, 8, 1, generator=g)
    target_alpha = torch.rand(2, 4, 1, 8, 8, generator=g)
    plain = explicit_supervision_loss(render, alpha, oi, target_alpha, alpha_weight=1.0)
    ones = explicit_supervision_loss(render, alpha, oi, target_alpha, alpha_weight=1.0, view_weights=torch.ones(4))
    assert torch.allclose(plain["total"], ones["total"])
    w = torch.tensor([4.0, 1.0, 1.0, 1.0])
    seen = explicit_supervision_loss(render, alpha, oi, target_alpha, alpha_weight=1.0, view_weights=w)
    per_view = (render.permute(0, 1, 4, 2, 3) - oi).square().mean(dim=(0, 2, 3, 4))
    assert torch.isclose(seen["rgb"], (per_view * w).mean())
    assert torch.isclose(seen["rgb"] - plain["rgb"], 3 * per_view[0] / 4)
    with pytest.raises(ValueError, match="view_weights"):
        explicit_supervision_loss(render, alpha, oi, view_weights=torch.ones(3))


def test_seen_view_weight_at_its_default_leaves_every_config_unchanged():
    from dd3g_core.distill.config import DistillConfig

    assert "seen_view_weight" not in DistillConfig().to_dict()
    assert DistillConfig(seen_view_weight=4.0).to_dict()["seen_view_weight"] == 4.0
    with pytest.raises(ValueError, match="seen_view_weight"):
        DistillConfig(seen_view_weight=-1.0)


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


def test_matte_dead_zone_ignores_the_teachers_background_noise():
    """The teacher's "white" is noisy: with ``floor`` a pixel 0.02 off white is background (alpha 0),
    not the faint fog the plain colour key made of it (alpha 0.25)."""
    v = torch.ones(1, 1, 3, 1, 3)
    v[..., 0, 0] = torch.tensor([0.98, 1.0, 1.0])
    v[..., 0, 1] = torch.tensor([0.945, 1.0, 1.0])  # halfway between floor 0.03 and softness 0.08
    v[..., 0, 2] = torch.tensor([0.5, 0.5, 1.0])
    plain = alpha_from_background(v, softness=0.08)
    keyed = alpha_from_background(v, softness=0.08, floor=0.03)
    assert torch.isclose(plain[0, 0, 0, 0, 0], torch.tensor(0.25))
    assert keyed[0, 0, 0, 0, 0] == 0 and torch.isclose(keyed[0, 0, 0, 0, 1], torch.tensor(0.5), atol=1e-5)
    assert keyed[0, 0, 0, 0, 2] == 1
    with pytest.raises(ValueError, match="floor"):
        alpha_from_background(v, softness=0.08, floor=0.08)


def test_connected_matte_keeps_enclosed_background_coloured_parts():
    """A white patch inside a red ring is part of the object with ``connected``; the plain key cuts it out."""
    v = torch.ones(1, 1, 3, 16, 16)
    v[..., 4:12, 4:12] = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1)
    v[..., 6:10, 6:10] = 1.0
    plain, connected = alpha_from_background(v, floor=0.03), alpha_from_background(v, floor=0.03, connected=True)
    assert (plain[..., 6:10, 6:10] == 0).all() and (connected[..., 6:10, 6:10] == 1).all()
    assert torch.equal(plain[..., :4, :], connected[..., :4, :])  # the outside is background in both


def test_recomposite_moves_a_view_onto_another_background():
    """OI = c·a + (1 - a)·white; recomposite(OI, a, white, b) = c·a + (1 - a)·b exactly."""
    g = torch.Generator().manual_seed(3)
    colour, alpha = torch.rand(2, 3, 3, 4, 4, generator=g), torch.rand(2, 3, 1, 4, 4, generator=g)
    oi = colour * alpha + (1 - alpha)
    new = torch.rand(2, 3, 3, generator=g)
    expected = colour * alpha + (1 - alpha) * new[..., None, None]
    assert torch.allclose(recomposite(oi, alpha, (1.0, 1.0, 1.0), new), expected, atol=1e-6)


def test_opacity_decision_loss_is_zero_for_decided_gaussians():
    assert opacity_decision_loss(torch.tensor([[0.0, 1.0]])) == 0
    assert torch.isclose(opacity_decision_loss(torch.tensor([[0.5, 0.5]])), torch.tensor(0.25))


def test_surface_consistency_is_zero_when_each_view_sees_its_own_gaussians():
    """A view's own Gaussian hidden behind another one costs (z_own - z_front)^2; alone it costs 0."""
    from dd3g_core.cameras import orbit_cameras
    from dd3g_core.gaussians import Gaussians
    from dd3g_core.render import render

    vm, ks = orbit_cameras([0.0], [0.0], 1.5, 49.1, 8, 8)  # [1, 4, 4], [1, 3, 3]
    wall = lambda z: torch.stack(  # an opaque wall of Gaussians at camera depth z, covering the view
        torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 24), torch.tensor([z]), indexing="ij"), -1
    ).reshape(-1, 3)
    to_world = lambda p: (p - vm[0, :3, 3]) @ vm[0, :3, :3]  # camera -> world (rotation is orthonormal)

    def scene(*depths):
        means = torch.cat([to_world(wall(z)) for z in depths])
        n = means.shape[0]
        return Gaussians(
            means=means[None],
            quats=torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4),
            log_scales=torch.full((1, n, 3), -2.5),
            opacity_logits=torch.full((1, n), 8.0),
            sh=torch.zeros(1, n, 1, 3),
        )

    own = torch.full((1, 1, 8, 8), 1.5)
    target = torch.ones(1, 1, 1, 8, 8)
    alone = render(scene(1.5), vm[None], ks[None], 8, 8)
    hidden = render(scene(1.5, 1.0), vm[None], ks[None], 8, 8)
    assert surface_consistency_loss(own, alone.depth, alone.alpha, target) < 1e-4
    assert surface_consistency_loss(own, hidden.depth, hidden.alpha, target) == pytest.approx(0.25, rel=0.05)
    assert surface_consistency_loss(own, hidden.depth, hidden.alpha, torch.zeros_like(target)) == 0  # no object
    finer = torch.full((1, 1, 16, 16), 1.5)  # a Gaussian grid finer than the render: pooled to the render's
    assert surface_consistency_loss(finer, hidden.depth, hidden.alpha, target) == pytest.approx(0.25, rel=0.05)
    with pytest.raises(ValueError, match="multiple"):
        surface_consistency_loss(torch.full((1, 1, 6, 6), 1.5), hidden.depth, hidden.alpha, target)
