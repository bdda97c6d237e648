"""The procedural world: determinism, splits, framing, colour keys, primitives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dd3g_core.render.views import composite_on_background, orbit_views, render_rgba
from dd3g_core.world import (
    BACKGROUND_PALETTE,
    PATTERNS,
    PRIMITIVES,
    SPLITS,
    background_color_for,
    gaussians_from_spec,
    object_spec,
    sample_object,
    split_of,
    split_seeds,
)
from dd3g_core.world.geometry import matrix_to_quat, quat_to_matrix
from dd3g_core.world.primitives import make_primitive


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


# -- determinism and validity --------------------------------------------------------------


def test_same_seed_same_spec_and_bit_identical_gaussians():
    spec = object_spec(7)
    assert spec == object_spec(7)
    assert json.loads(json.dumps(spec)) == spec  # json-serialisable, losslessly
    assert same(sample_object(7, 800), sample_object(7, 800))


def test_spec_round_trips_through_json():
    spec = json.loads(json.dumps(object_spec(11)))
    a = gaussians_from_spec(spec, 500, np.random.default_rng([11, 1, 500]))
    assert same(a, sample_object(11, 500))


def test_different_seeds_differ():
    specs = [json.dumps(object_spec(s)) for s in range(10)]
    assert len(set(specs)) == 10
    assert not torch.equal(sample_object(1, 300).means, sample_object(2, 300).means)


@pytest.mark.parametrize("n", [1, 250, 3000])
def test_exact_budget_and_container(n):
    g = sample_object(5, n)
    assert g.num_gaussians == n and g.means.shape == (n, 3) and g.sh.shape == (n, 1, 3)
    assert all(t.dtype == torch.float32 for t in g.parameters())
    g.check_finite()
    assert g.means.norm(dim=-1).max() <= 0.5
    if n >= 250:  # splats are sized to the sample spacing
        assert (g.scales.amax(-1) < 0.1).all()


def test_bad_arguments():
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match="seed"):
            object_spec(bad)
    with pytest.raises(ValueError, match="num_gaussians"):
        sample_object(0, 0)


def test_generator_covers_every_primitive_and_pattern():
    specs = [object_spec(s) for s in range(150)]
    kinds = {p["primitive"] for s in specs for p in s["parts"]}
    patterns = {p["pattern"]["kind"] for s in specs for p in s["parts"]}
    assert kinds == set(PRIMITIVES) - {"frustum"}
    assert patterns == set(PATTERNS)
    assert {len(s["parts"]) for s in specs} == {1, 2, 3, 4}


# -- splits -----------------------------------------------------------------------------------


def test_splits_are_disjoint_and_addressable():
    (a0, a1), (b0, b1) = SPLITS["train"], SPLITS["heldout"]
    assert a1 <= b0 or b1 <= a0
    train, held = split_seeds("train", 50), split_seeds("heldout", 50, start=10)
    assert not set(train) & set(held)
    assert held[0] == b0 + 10 and len(held) == 50
    assert {split_of(s) for s in train} == {"train"} and {split_of(s) for s in held} == {"heldout"}
    assert object_spec(held[0])["split"] == "heldout"
    with pytest.raises(ValueError, match="cannot take"):
        split_seeds("heldout", b1 - b0 + 1)
    with pytest.raises(ValueError, match="unknown split"):
        split_seeds("test", 1)
    with pytest.raises(ValueError, match="no split"):
        split_of(b1)


# -- rendering and framing ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 1_000_000])
def test_object_fills_frame_without_touching_border(seed):
    rgba = render_rgba(sample_object(seed), resolution=64)
    assert rgba.shape == (64, 64, 4) and rgba.dtype == np.uint8
    alpha = rgba[..., 3]
    assert 0.05 < (alpha > 127).mean() < 0.7
    mask = alpha > 0
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    assert (rgba[..., :3][alpha == 0] == 0).all()  # straight alpha, black where empty


def test_render_rgba_matches_orbit_views():
    g = sample_object(4, 1000)
    rgba = render_rgba(g, azimuth_deg=30.0, elevation_deg=10.0, resolution=32)
    rgb, alpha = orbit_views(g, [30.0], 10.0, resolution=32)
    np.testing.assert_allclose(rgba[..., 3] / 255.0, alpha[0, ..., 0].numpy(), atol=1 / 255 + 1e-6)
    # re-premultiplying the straight colour gives back the black-background render
    premul = rgba[..., :3].astype(np.float32) * rgba[..., 3:] / 255.0**2
    np.testing.assert_allclose(premul, rgb[0].numpy(), atol=3 / 255)


def test_empty_scene_renders_as_background():
    g = sample_object(0, 10).select(torch.zeros(10, dtype=torch.bool))
    assert (render_rgba(g, resolution=16) == 0).all()
    rgb, alpha = orbit_views(g, [0.0, 90.0], resolution=16, background=(1.0, 0.5, 0.0))
    assert rgb.shape == (2, 16, 16, 3) and (alpha == 0).all() and torch.allclose(rgb[..., 1], torch.tensor(0.5))


# -- backgrounds ----------------------------------------------------------------------------------


def test_background_is_a_key_far_from_object_colours():
    for seed in range(0, 400, 7):
        bg = background_color_for(seed)
        assert bg in BACKGROUND_PALETTE
        g = sample_object(seed, 400)
        dist = (g.rgb * 255 - torch.tensor(bg, dtype=torch.float32)).norm(dim=-1)
        assert dist.min() > 120, (seed, bg, dist.min())


def test_composite_on_background():
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]], dtype=np.uint8)
    out = composite_on_background(rgba, (0, 255, 0))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 255, 0])
    np.testing.assert_array_equal(out[0, 2], [0, 127, 128])
    with pytest.raises(ValueError):
        composite_on_background(rgba[..., :3], (0, 0, 0))


# -- primitives -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,params",
    [
        ("ellipsoid", dict(rx=0.3, ry=0.5, rz=0.2)),
        ("box", dict(hx=0.3, hy=0.2, hz=0.4)),
        ("cylinder", dict(r_bottom=0.2, r_top=0.2, h=0.4)),
        ("cone", dict(r_bottom=0.3, r_top=0.0, h=0.3)),
        ("cone", dict(r_bottom=0.3, r_top=0.1, h=0.3)),
        ("torus", dict(major=0.4, minor=0.1)),
        ("capsule", dict(radius=0.15, h=0.3)),
    ],
)
def test_primitive_normals_point_outwards(kind, params):
    prim = make_primitive(kind, params)
    rng = np.random.default_rng(0)
    for patch in prim.patches():
        u, v = rng.uniform(0.05, 0.95, (2, 200))  # away from rims, where a step crosses an edge
        p, n = patch(u, v)
        np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-9)
        assert not prim.inside(p, 1e-6).any()
        assert prim.inside(p - 0.002 * n).all()
        assert not prim.inside(p + 0.002 * n).any()


def test_quaternion_round_trip():
    q = np.random.default_rng(0).standard_normal((100, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    back = matrix_to_quat(quat_to_matrix(q))
    np.testing.assert_allclose(np.abs((back * q).sum(-1)), 1.0, atol=1e-9)
