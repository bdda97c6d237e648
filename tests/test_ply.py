"""PLY export/import in the standard 3DGS layout: exact round trips and useful errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from dd3g_core.gaussians import Gaussians
from dd3g_core.ply import REQUIRED, load_ply, ply_property_names, save_ply


def random_gaussians(n: int, k: int = 1, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return Gaussians(means=r(n, 3), quats=r(n, 4), log_scales=r(n, 3) - 3, opacity_logits=r(n), sh=r(n, k, 3))


def assert_same(a: Gaussians, b: Gaussians) -> None:
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == torch.float32, name
        assert torch.equal(x, y), name


def write_vertices(path, columns: dict[str, np.ndarray], element: str = "vertex", text: bool = False) -> None:
    n = len(next(iter(columns.values())))
    rec = np.empty(n, dtype=[(k, v.dtype.str) for k, v in columns.items()])
    for k, v in columns.items():
        rec[k] = v
    PlyData([PlyElement.describe(rec, element)], text=text).write(str(path))


def lgm_columns(n: int = 5) -> dict[str, np.ndarray]:
    """The 14 float properties LGM writes (no normals, no f_rest)."""
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(n).astype(np.float32) for name in REQUIRED}


@pytest.mark.parametrize("k", [1, 4, 9, 16])
def test_round_trip_is_exact(tmp_path, k):
    g = random_gaussians(37, k)
    path = tmp_path / "g.ply"
    save_ply(g, path)
    back = load_ply(path)
    assert back.sh.shape == (37, k, 3)
    assert_same(g, back)


def test_layout_matches_3dgs(tmp_path):
    k = 4
    g = random_gaussians(3, k)
    save_ply(g, tmp_path / "g.ply")
    ply = PlyData.read(str(tmp_path / "g.ply"))
    assert [e.name for e in ply.elements] == ["vertex"]
    assert not ply.text and ply.byte_order == "<"
    v = ply["vertex"]
    names = [p.name for p in v.properties]
    assert names == ply_property_names(k)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert len([n for n in names if n.startswith("f_rest_")]) == 3 * (k - 1)
    assert all(v.data.dtype[n] == np.dtype("<f4") for n in names)
    # channel-major f_rest: index c*(K-1) + (k-1) holds sh[:, k, c]
    for c in range(3):
        for kk in range(1, k):
            np.testing.assert_array_equal(v[f"f_rest_{c * (k - 1) + kk - 1}"], g.sh[:, kk, c].numpy())
    np.testing.assert_array_equal(v["rot_0"], g.quats[:, 0].numpy())  # w first
    np.testing.assert_array_equal(v["opacity"], g.opacity_logits.numpy())  # raw logits
    np.testing.assert_array_equal(v["nx"], np.zeros(3, np.float32))


def test_lgm_style_14_floats_load(tmp_path):
    cols = lgm_columns()
    write_vertices(tmp_path / "lgm.ply", cols)
    g = load_ply(tmp_path / "lgm.ply")
    assert g.num_gaussians == 5 and g.sh_degree == 0
    np.testing.assert_array_equal(g.quats[:, 0].numpy(), cols["rot_0"])
    np.testing.assert_array_equal(g.sh[:, 0, 2].numpy(), cols["f_dc_2"])


def test_safe_casts_and_ascii_are_accepted(tmp_path):
    cols = lgm_columns()
    cols["x"] = cols["x"].astype(np.float64)
    cols["y"] = np.arange(5, dtype=np.int16)  # exactly representable in float32
    write_vertices(tmp_path / "c.ply", cols, text=True)
    g = load_ply(tmp_path / "c.ply")
    assert g.means.dtype == torch.float32
    np.testing.assert_array_equal(g.means[:, 1].numpy(), np.arange(5, dtype=np.float32))


def test_empty_scene_round_trips(tmp_path):
    g = random_gaussians(0, 4)
    save_ply(g, tmp_path / "e.ply")
    back = load_ply(tmp_path / "e.ply")
    assert back.num_gaussians == 0 and back.sh.shape == (0, 4, 3)


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "g.ply"
    save_ply(random_gaussians(4), path)
    before = path.read_bytes()
    bad = random_gaussians(4)
    bad.means[2, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        save_ply(bad, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["g.ply"]  # no temporary left behind
    save_ply(random_gaussians(2), tmp_path / "new_dir" / "g.ply")  # parents are created
    assert os.listdir(tmp_path / "new_dir") == ["g.ply"]


def test_batched_is_refused(tmp_path):
    g = Gaussians.cat([random_gaussians(3), random_gaussians(3, seed=1)], dim=0)
    with pytest.raises(ValueError, match="index a scene"):
        save_ply(g, tmp_path / "b.ply")


# -- malformed inputs -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such PLY"):
        load_ply(tmp_path / "nope.ply")


def test_not_a_ply(tmp_path):
    (tmp_path / "x.ply").write_bytes(b"\x89PNG\r\n\x1a\n not a ply at all")
    with pytest.raises(ValueError, match="not a readable PLY"):
        load_ply(tmp_path / "x.ply")


def test_truncated(tmp_path):
    save_ply(random_gaussians(10), tmp_path / "g.ply")
    data = (tmp_path / "g.ply").read_bytes()
    (tmp_path / "t.ply").write_bytes(data[:-7])
    with pytest.raises(ValueError, match="truncated"):
        load_ply(tmp_path / "t.ply")


def test_no_vertex_element(tmp_path):
    write_vertices(tmp_path / "p.ply", lgm_columns(), element="point")
    with pytest.raises(ValueError, match="no 'vertex' element.*point"):
        load_ply(tmp_path / "p.ply")


def test_missing_required_fields_are_listed(tmp_path):
    cols = lgm_columns()
    del cols["opacity"], cols["rot_3"]
    write_vertices(tmp_path / "m.ply", cols)
    with pytest.raises(ValueError, match="missing required properties: opacity, rot_3"):
        load_ply(tmp_path / "m.ply")


def test_unsafe_integer_type(tmp_path):
    cols = lgm_columns()
    cols["scale_1"] = np.arange(5, dtype=np.int32)
    write_vertices(tmp_path / "i.ply", cols)
    with pytest.raises(ValueError, match=r"scale_1 \(int32\)"):
        load_ply(tmp_path / "i.ply")


def test_list_property(tmp_path):
    cols = lgm_columns(2)
    rec = np.empty(2, dtype=[(k, "f4") for k in cols if k != "x"] + [("x", "O")])
    for k, v in cols.items():
        rec[k] = v if k != "x" else [np.array([1.0, 2.0], "f4"), np.array([3.0], "f4")]
    PlyData([PlyElement.describe(rec, "vertex")]).write(str(tmp_path / "l.ply"))
    with pytest.raises(ValueError, match=r"x \(list\)"):
        load_ply(tmp_path / "l.ply")


def test_nonfinite_rows_reported_or_dropped(tmp_path):
    cols = lgm_columns(6)
    cols["scale_0"][2] = np.inf
    cols["f_dc_1"][4] = np.nan
    write_vertices(tmp_path / "n.ply", cols)
    with pytest.raises(ValueError, match=r"2 of 6 Gaussians have NaN/Inf values \(first at index 2\).*drop_nonfinite"):
        load_ply(tmp_path / "n.ply")
    g = load_ply(tmp_path / "n.ply", drop_nonfinite=True)
    assert g.num_gaussians == 4
    np.testing.assert_array_equal(g.means[:, 0].numpy(), cols["x"][[0, 1, 3, 5]])


@pytest.mark.parametrize("m", [5, 3, 12])
def test_bad_f_rest_count(tmp_path, m):
    cols = lgm_columns()
    for i in range(m):
        cols[f"f_rest_{i}"] = np.zeros(5, np.float32)
    write_vertices(tmp_path / "r.ply", cols)
    with pytest.raises(ValueError, match=f"{m} f_rest properties; expected 3\\*\\(K-1\\)"):
        load_ply(tmp_path / "r.ply")


def test_f_rest_gap(tmp_path):
    cols = lgm_columns()
    for i in [*range(8), 9]:
        cols[f"f_rest_{i}"] = np.zeros(5, np.float32)
    write_vertices(tmp_path / "r.ply", cols)
    with pytest.raises(ValueError, match="without gaps"):
        load_ply(tmp_path / "r.ply")
