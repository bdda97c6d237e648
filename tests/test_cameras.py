import math

import pytest
import torch

from dd3g_core.cameras import (
    LAYOUTS,
    camera_centers,
    get_layout,
    imagedream_camera_embedding,
    intrinsics,
    look_at,
    orbit_cameras,
    pixel_rays,
    plucker,
)


def test_orbit_camera_looks_at_origin_with_opencv_axes():
    viewmats, Ks = orbit_cameras([0.0, 90.0, 33.0], [0.0, 0.0, 40.0], 1.5, 49.1, 64, 48)
    centers = camera_centers(viewmats)
    assert torch.allclose(centers.norm(dim=-1), torch.full((3,), 1.5), atol=1e-5)
    # az 0 sits on +z, az 90 on +x, elevation > 0 above (+y)
    assert torch.allclose(centers[0], torch.tensor([0.0, 0.0, 1.5]), atol=1e-5)
    assert torch.allclose(centers[1], torch.tensor([1.5, 0.0, 0.0]), atol=1e-5)
    assert centers[2, 1] > 0
    origin_cam = viewmats[:, :3, 3]  # world origin in camera coordinates
    assert torch.allclose(origin_cam, torch.tensor([0.0, 0.0, 1.5]).expand(3, 3), atol=1e-5)
    up_world = torch.tensor([0.0, 1.0, 0.0])
    up_in_cam = viewmats[0, :3, :3] @ up_world
    assert up_in_cam[1] < -0.99  # OpenCV: +y is down in the image
    assert torch.allclose(torch.linalg.det(viewmats[:, :3, :3]), torch.ones(3), atol=1e-5)
    f = 24 / math.tan(math.radians(49.1) / 2)
    assert torch.allclose(Ks[0], torch.tensor([[f, 0, 32.0], [0, f, 24.0], [0, 0, 1]]), atol=1e-4)


def test_straight_down_view_is_defined():
    viewmats, _ = orbit_cameras([0.0], [90.0], 2.0, 40.0, 8, 8)
    assert torch.isfinite(viewmats).all()
    assert torch.allclose(camera_centers(viewmats)[0], torch.tensor([0.0, 2.0, 0.0]), atol=1e-5)


def test_degenerate_cameras_raise():
    with pytest.raises(ValueError, match="equals its target"):
        look_at(torch.ones(3), torch.ones(3))
    for fov in (0.0, -5.0, 180.0, float("nan")):
        with pytest.raises(ValueError, match="field of view"):
            intrinsics(fov, 8, 8)
    with pytest.raises(ValueError, match="radius"):
        orbit_cameras([0.0], [0.0], 0.0, 40.0, 8, 8)
    with pytest.raises(ValueError, match="exceeds"):
        intrinsics(40.0, 100_000, 100_000)
    with pytest.raises(ValueError, match="positive"):
        intrinsics(40.0, 0, 8)


def test_pixel_rays_are_unit_and_through_pixel_centres():
    viewmats, Ks = orbit_cameras([20.0], [10.0], 1.5, 49.1, 6, 4)
    o, d = pixel_rays(viewmats, Ks, 6, 4)
    assert o.shape == d.shape == (1, 4, 6, 3)
    rays = plucker(o, d)
    m = rays[..., :3]
    assert torch.allclose(d.norm(dim=-1), torch.ones(1, 4, 6), atol=1e-5)
    assert torch.allclose((m * d).sum(-1), torch.zeros(1, 4, 6), atol=1e-5)  # Plücker constraint
    assert torch.allclose(o, camera_centers(viewmats)[:, None, None].expand_as(o))
    # a point along the ray through pixel (row 1, col 2) projects back to that pixel centre
    p = o[0, 1, 2] + 0.8 * d[0, 1, 2]
    pc = viewmats[0, :3, :3] @ p + viewmats[0, :3, 3]
    uv = (Ks[0] @ pc)[:2] / pc[2]
    assert torch.allclose(uv, torch.tensor([2.5, 1.5]), atol=1e-4)


def test_pixel_rays_on_a_coarse_grid_pass_through_cell_centres():
    viewmats, Ks = orbit_cameras([0.0, 90.0], [10.0, 10.0], 1.5, 49.1, 8, 8)
    o, d = pixel_rays(viewmats[None], Ks[None], 8, 8, grid=(2, 2))  # leading batch dim: [1, C, 2, 2, 3]
    assert d.shape == (1, 2, 2, 2, 3)
    p = o[0, 1, 1, 0] + 1.3 * d[0, 1, 1, 0]  # camera 1, cell row 1, col 0: pixel centre (2, 6)
    pc = viewmats[1, :3, :3] @ p + viewmats[1, :3, 3]
    assert torch.allclose((Ks[1] @ pc)[:2] / pc[2], torch.tensor([2.0, 6.0]), atol=1e-4)


def test_imagedream_embedding_matches_reference_values():
    emb = imagedream_camera_embedding([0, 90, 180, 270], 0.0)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, -1, -1, 0, 1, 0, 0, 0, 0, 0, 1],
            [0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
            [-1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1],
            [0, 0, -1, -1, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
            [0] * 16,
        ],
        dtype=torch.float32,
    )
    assert torch.allclose(emb, expected, atol=1e-6)


def test_layouts():
    layout = get_layout("imagedream")
    viewmats, Ks = layout.cameras()
    assert viewmats.shape == (4, 4, 4) and Ks[0, 0, 2] == 128
    rotated, _ = layout.cameras(azimuth_offset_deg=90.0)
    assert torch.allclose(rotated[0], viewmats[1], atol=1e-5)
    assert set(LAYOUTS) >= {"imagedream", "tiny"}
    with pytest.raises(ValueError, match="unknown view layout"):
        get_layout("nope")
