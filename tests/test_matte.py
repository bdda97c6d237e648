"""The edge-aware matte (``dd3g_core.distill.matte``): coverage recovered at the silhouette, the key elsewhere."""

import pytest
import torch

from dd3g_core.distill.config import DistillConfig
from dd3g_core.distill.losses import alpha_from_background, recomposite
from dd3g_core.distill.matte import teacher_matte, unmixed_alpha


def _disc_on_white(colour, size=24, radius=7.3, supersample=8):
    """A disc of one colour with its true (supersampled) coverage, composited on white: OI and the coverage."""
    n = size * supersample
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    centre = n / 2
    inside = (((ys + 0.5 - centre) ** 2 + (xs + 0.5 - centre) ** 2).sqrt() <= radius * supersample).float()
    coverage = torch.nn.functional.avg_pool2d(inside[None, None], supersample)[0]  # [1, H, W]
    c = torch.tensor(colour).reshape(3, 1, 1)
    oi = coverage * c + (1 - coverage)  # on white
    return oi[None, None], coverage[None, None]  # [1, 1, 3, H, W], [1, 1, 1, H, W]


@pytest.mark.parametrize("colour", [(0.1, 0.2, 0.6), (0.8, 0.3, 0.1), (0.05, 0.05, 0.05)])
def test_unmixing_recovers_the_coverage_of_silhouette_pixels(colour):
    """The key calls a half-covered edge pixel opaque (its colour target is then the object mixed with white:
    a light rim on black); unmixing recovers the true coverage there, and the object's colour on black."""
    oi, truth = _disc_on_white(colour)
    edge = (truth > 0.02) & (truth < 0.98)
    assert edge.sum() > 20
    key = alpha_from_background(oi, floor=0.03)
    unmixed = unmixed_alpha(oi, floor=0.03)
    key_err, unmixed_err = (key - truth).abs()[edge].mean(), (unmixed - truth).abs()[edge].mean()
    assert key_err > 0.2
    assert unmixed_err < 0.02, (key_err, unmixed_err)
    black = torch.zeros(1, 1, 3)
    on_black = truth * torch.tensor(colour).reshape(1, 1, 3, 1, 1)
    rim = lambda a: (recomposite(oi, a, (1.0, 1.0, 1.0), black) - on_black).abs().amax(2, keepdim=True)[edge]
    assert rim(key).mean() > 0.2 and rim(unmixed).mean() < 0.02
    # the interior stays opaque and the background empty
    assert (unmixed[truth >= 1] == 1).all() and (unmixed[truth == 0] == 0).all()


def test_unmixing_keeps_the_key_where_the_object_is_background_coloured():
    """A near-white object (its colour within ``softness`` of the background) cannot be unmixed: the key stays."""
    oi, _ = _disc_on_white((0.95, 0.96, 0.94))
    assert torch.equal(unmixed_alpha(oi, floor=0.03), alpha_from_background(oi, floor=0.03))
    flat = torch.ones(2, 3, 3, 8, 8)  # nothing but background: nothing to unmix
    assert (unmixed_alpha(flat, floor=0.03) == 0).all()


def test_unmixing_is_batched_per_view_and_checks_its_rings():
    red, _ = _disc_on_white((0.9, 0.1, 0.1))
    blue, _ = _disc_on_white((0.1, 0.1, 0.9), radius=5.1)
    both = torch.cat([red, blue], 1)  # [1, 2, 3, H, W]
    together = unmixed_alpha(both, floor=0.03)
    assert together.shape == (1, 2, 1, 24, 24)
    assert torch.equal(together[:, :1], unmixed_alpha(red, floor=0.03))
    assert torch.equal(together[:, 1:], unmixed_alpha(blue, floor=0.03))
    with pytest.raises(ValueError, match="rings"):
        unmixed_alpha(red, rings=0)


def test_the_unmixed_matte_is_an_option_absent_from_configs_at_its_default():
    assert "alpha_unmix_rings" not in DistillConfig().to_dict()
    assert DistillConfig(alpha_unmix_rings=2).to_dict()["alpha_unmix_rings"] == 2
    with pytest.raises(ValueError, match="alpha_unmix_rings"):
        DistillConfig(alpha_unmix_rings=-1)


def test_the_objective_and_the_fit_ceiling_share_one_matte_switch():
    oi, _ = _disc_on_white((0.2, 0.5, 0.3))
    key, unmixed = alpha_from_background(oi, floor=0.03), unmixed_alpha(oi, floor=0.03, rings=2)
    assert torch.equal(teacher_matte(oi, (1.0, 1.0, 1.0), 0.08, 0.03), key)
    assert torch.equal(teacher_matte(oi, (1.0, 1.0, 1.0), 0.08, 0.03, unmix_rings=2), unmixed)
    assert not torch.equal(key, unmixed)
