"""Geometry helpers of the procedural world (float64 numpy): rotations and surface sampling.

Rotations are wxyz quaternions / 3x3 matrices acting on column vectors (``x' = R x``); the
surface helpers evaluate :class:`~dd3g_core.world.primitives.Primitive` patches.
"""

from __future__ import annotations

import math

import numpy as np

from .primitives import Patch, Primitive

# --------------------------------------------------------------------------------------
# Rotations (float64 numpy; the world builds everything in double precision and casts once)
# --------------------------------------------------------------------------------------


def quat_to_matrix(q: np.ndarray) -> np.ndarray:  # [..., 4] wxyz -> [..., 3, 3]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quat(m: np.ndarray) -> np.ndarray:  # [..., 3, 3] rotation -> [..., 4] wxyz, w >= 0
    """Shepperd's method: pick the largest of (w, x, y, z) to divide by, stable everywhere."""
    m = np.asarray(m, dtype=np.float64)
    t = np.stack(
        [
            1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
            1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
        ],
        -1,
    )
    case = np.argmax(t, axis=-1)
    s = np.sqrt(np.maximum(np.take_along_axis(t, case[..., None], -1)[..., 0], 1e-12)) * 2.0  # 4 * max comp
    d = lambda i, j: m[..., i, j]  # noqa: E731
    cands = np.stack(
        [
            np.stack([s / 4, (d(2, 1) - d(1, 2)) / s, (d(0, 2) - d(2, 0)) / s, (d(1, 0) - d(0, 1)) / s], -1),
            np.stack([(d(2, 1) - d(1, 2)) / s, s / 4, (d(0, 1) + d(1, 0)) / s, (d(0, 2) + d(2, 0)) / s], -1),
            np.stack([(d(0, 2) - d(2, 0)) / s, (d(0, 1) + d(1, 0)) / s, s / 4, (d(1, 2) + d(2, 1)) / s], -1),
            np.stack([(d(1, 0) - d(0, 1)) / s, (d(0, 2) + d(2, 0)) / s, (d(1, 2) + d(2, 1)) / s, s / 4], -1),
        ],
        -2,
    )
    q = np.take_along_axis(cands, case[..., None, None].repeat(4, -1), -2)[..., 0, :]
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def axis_angle_matrix(axis, angle_rad: float) -> np.ndarray:  # -> [3, 3]
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * K + (1 - math.cos(angle_rad)) * (K @ K)


def frame_from_axis(axis: np.ndarray, spin_rad: float = 0.0) -> np.ndarray:  # [3] -> [3, 3]
    """A rotation taking local +y to ``axis``, followed by a spin of ``spin_rad`` about it."""
    y = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(y[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    x = np.cross(y, helper)
    x /= np.linalg.norm(x)
    z = np.cross(x, y)
    return axis_angle_matrix(y, spin_rad) @ np.stack([x, y, z], axis=1)


# --------------------------------------------------------------------------------------
# Surface evaluation shared by spec building (placement, framing) and Gaussian sampling
# --------------------------------------------------------------------------------------


def eval_patch(
    patch: Patch, u: np.ndarray, v: np.ndarray, h: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # p, n, dp/du, dp/dv: each [M, 3]
    """Points, normals and (finite-difference) tangents of a patch at ``(u, v)`` [M]."""
    p, n = patch(u, v)
    u0, u1 = np.clip(u - h, 0.0, 1.0), np.clip(u + h, 0.0, 1.0)
    v0, v1 = np.clip(v - h, 0.0, 1.0), np.clip(v + h, 0.0, 1.0)
    pu = (patch(u1, v)[0] - patch(u0, v)[0]) / (u1 - u0)[:, None]
    pv = (patch(u, v1)[0] - patch(u, v0)[0]) / (v1 - v0)[:, None]
    return p, n, pu, pv


def grid_uv(nu: int, nv: int, rng: np.random.Generator | None = None, jitter: float = 0.0):
    """Cell centres of an ``nu x nv`` grid on the unit square (u, v each [nu*nv]), optionally
    moved by up to ``jitter/2`` of a cell so the samples do not form visible rows."""
    u, v = np.meshgrid((np.arange(nu) + 0.5) / nu, (np.arange(nv) + 0.5) / nv, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    if rng is not None and jitter > 0:
        u = u + jitter * (rng.random(u.shape) - 0.5) / nu
        v = v + jitter * (rng.random(v.shape) - 0.5) / nv
    return np.clip(u, 0.0, 1.0), np.clip(v, 0.0, 1.0)


def patch_stats(prim: Primitive, grid: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patch: area, mean |dp/du| and mean |dp/dv| (the physical side lengths of the
    parameter square, used to give grid cells a sensible aspect ratio). Each [P]."""
    u, v = grid_uv(grid, grid)
    areas, lu, lv = [], [], []
    for patch in prim.patches():
        _, _, pu, pv = eval_patch(patch, u, v)
        areas.append(np.linalg.norm(np.cross(pu, pv), axis=-1).mean())
        lu.append(np.linalg.norm(pu, axis=-1).mean())
        lv.append(np.linalg.norm(pv, axis=-1).mean())
    return np.array(areas), np.array(lu), np.array(lv)


def surface_grid(prim: Primitive, per_patch: int = 17) -> np.ndarray:  # -> [P * per_patch^2, 3]
    """A deterministic point grid that includes every patch's boundary (so box corners and
    cone tips are present): enough to frame an object without random sampling."""
    t = np.linspace(0.0, 1.0, per_patch)
    u, v = (a.reshape(-1) for a in np.meshgrid(t, t, indexing="ij"))
    return np.concatenate([patch(u, v)[0] for patch in prim.patches()])
