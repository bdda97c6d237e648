import pytest
import torch

from dd3g_core.gaussians import SH_C0, Gaussians, rgb_to_sh0, sh0_to_rgb


def random_gaussians(n=10, batch=(), k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*batch, n, *s, generator=g)  # noqa: E731
    return Gaussians(
        means=r(3), quats=r(4), log_scales=r(3) - 3, opacity_logits=torch.randn(*batch, n, generator=g), sh=r(k, 3)
    )


def test_activations_are_the_documented_ones():
    g = random_gaussians()
    assert torch.allclose(g.scales, g.log_scales.exp())
    assert torch.allclose(g.opacities, torch.sigmoid(g.opacity_logits))
    assert torch.allclose(g.rotations.norm(dim=-1), torch.ones(10))
    assert torch.allclose(g.rgb, (g.sh[:, 0] * SH_C0 + 0.5).clamp(0, 1))


def test_from_activated_round_trips():
    rgb = torch.rand(5, 3)
    op = torch.rand(5) * 0.9 + 0.05
    sc = torch.rand(5, 3) * 0.1 + 0.001
    g = Gaussians.from_activated(torch.zeros(5, 3), torch.tensor([[1.0, 0, 0, 0]]).repeat(5, 1), sc, op, rgb)
    assert torch.allclose(g.rgb, rgb, atol=1e-6)
    assert torch.allclose(g.opacities, op, atol=1e-6)
    assert torch.allclose(g.scales, sc, rtol=1e-5)
    assert torch.allclose(sh0_to_rgb(rgb_to_sh0(rgb)), rgb)


def test_shape_errors_are_clear():
    g = random_gaussians()
    with pytest.raises(ValueError, match="quats"):
        Gaussians(g.means, g.quats[:, :3], g.log_scales, g.opacity_logits, g.sh)
    with pytest.raises(ValueError, match="SH coefficient count"):
        Gaussians(g.means, g.quats, g.log_scales, g.opacity_logits, torch.zeros(10, 2, 3))
    with pytest.raises(ValueError, match="floating"):
        Gaussians(g.means.long(), g.quats, g.log_scales, g.opacity_logits, g.sh)


def test_check_finite_names_field_and_row():
    g = random_gaussians()
    g.log_scales[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"log_scales.*\[7\]"):
        g.check_finite()


def test_batching_cat_prune_pad():
    a, b = random_gaussians(4, seed=1), random_gaussians(6, k=4, seed=2)
    c = Gaussians.cat([a, b])
    assert c.num_gaussians == 10 and c.sh_degree == 1
    assert torch.equal(c.sh[:4, 0], a.sh[:, 0]) and torch.equal(c.sh[:4, 1:], torch.zeros(4, 3, 3))
    stacked = Gaussians.cat([a, a.clone()], dim=0)
    assert stacked.batch_shape == (2,) and torch.equal(stacked[1].means, a.means)
    padded = a.pad_to(9)
    assert padded.num_gaussians == 9 and (padded.opacities[4:] < 1e-12).all()
    pruned = padded.prune(min_opacity=1e-6)
    assert pruned.num_gaussians == 4
    with pytest.raises(ValueError):
        a.pad_to(2)
    with pytest.raises(ValueError, match="unbatched"):
        stacked.select(torch.ones(4, dtype=torch.bool))


def test_to_and_requires_grad():
    g = random_gaussians().to(torch.float64).requires_grad_()
    assert g.dtype == torch.float64 and all(p.requires_grad for p in g.parameters())
    assert not any(p.requires_grad for p in g.detach().parameters())
