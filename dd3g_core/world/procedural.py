"""Turn object specs into 3D Gaussians: surface splats with patterned, softly shaded colours.

Representation (a choice, recorded here and in docs/world.md): every Gaussian is a small,
flat *surface* splat — its two long axes lie in the tangent plane, sized to the local sample
spacing so that neighbours overlap into a closed, opaque skin, and its third axis (the
surface normal) is ``THICKNESS`` times thinner. Volume filling would waste most of the budget
on Gaussians nobody sees. Opacity is ``OPACITY`` everywhere; colour is SH degree 0.

Sampling, per object:

1. Each part's surface is split into patches whose ``(u, v)`` maps are roughly equal-area.
2. The Gaussian budget is shared among parts in proportion to *exposed* area (area not
   buried inside another part, estimated on a fixed grid).
3. Each patch gets a jittered ``nu x nv`` grid whose aspect ratio follows the patch's
   physical side lengths; the splat extents come from the local Jacobian times the cell size.
4. Samples buried inside another part are dropped; the count is then made exactly equal to
   the budget (random extra samples on exposed surface, or dropping a few at random).

Everything is float64 numpy seeded by ``default_rng([seed, 1, num_gaussians])`` and cast to
float32 once, so a seed and a budget give bit-identical Gaussians on a given platform.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..gaussians import Gaussians
from .geometry import eval_patch, grid_uv, matrix_to_quat, patch_stats, quat_to_matrix
from .spec import SHADING, _check_seed, object_spec, part_transform

SPLAT_SIZE = 0.65  # tangent sigma as a fraction of the cell size: neighbours overlap, edges stay crisp
THICKNESS = 0.2  # normal sigma / smaller tangent sigma
OPACITY = 0.95
DEFAULT_NUM_GAUSSIANS = 3000


def sample_object(seed: int, num_gaussians: int = DEFAULT_NUM_GAUSSIANS) -> Gaussians:
    """Procedural object ``seed`` as exactly ``num_gaussians`` unbatched float32 Gaussians
    (means [N, 3], sh [N, 1, 3]), inside a sphere of radius ~0.5 around the origin."""
    seed = _check_seed(seed)
    return gaussians_from_spec(object_spec(seed), num_gaussians, rng=np.random.default_rng([seed, 1, num_gaussians]))


def _pattern_colors(local: np.ndarray, extents: np.ndarray, pattern: dict, colors: list) -> np.ndarray:
    """Base colour [M, 3] of part-local points [M, 3] (coordinates relative to the part's
    half-extents, so a pattern scales with its primitive)."""
    q = local / extents  # roughly in [-1, 1]^3
    c0 = np.asarray(colors[0], dtype=np.float64)
    c1 = np.asarray(colors[-1], dtype=np.float64)
    kind = pattern["kind"]
    if kind == "solid":
        return np.broadcast_to(c0, local.shape).copy()
    if kind == "gradient":
        t = np.clip(0.5 * (q[:, pattern["axis"]] + 1.0), 0.0, 1.0)[:, None]
        t = t * t * (3.0 - 2.0 * t)  # smoothstep: flat ends read as two colours blending
        return (1.0 - t) * c0 + t * c1
    if kind == "stripes":
        pick = np.floor(0.5 * (q[:, pattern["axis"]] + 1.0) * pattern["count"] + pattern["offset"]) % 2
    elif kind == "radial_stripes":  # wedges around the part's y axis (good on cylinders, tori)
        angle = np.arctan2(local[:, 2], local[:, 0]) / (2 * math.pi) + 0.5
        pick = np.floor(angle * pattern["count"] + pattern["offset"]) % 2
    elif kind == "checker":
        pick = np.floor(0.5 * (q + 1.0) * pattern["count"] + pattern["offset"]).sum(-1) % 2
    elif kind == "two_tone":
        pick = (q[:, pattern["axis"]] > pattern["split"]).astype(np.float64)
    else:
        raise ValueError(f"unknown pattern {kind!r}")
    return np.where(pick[:, None] > 0.5, c1, c0)


def _splat_color(local, frames, sigmas, extents, part: dict) -> np.ndarray:  # -> [M, 3]
    """The pattern averaged over five points of each splat's footprint: a splat that straddles
    a stripe edge gets the blend, so edges look anti-aliased instead of jagged."""
    offsets = ((0.0, 0.0), (0.8, 0.0), (-0.8, 0.0), (0.0, 0.8), (0.0, -0.8))
    total = 0.0
    for a, b in offsets:
        p = local + frames[:, :, 0] * (a * sigmas[:, :1]) + frames[:, :, 1] * (b * sigmas[:, 1:2])
        total = total + _pattern_colors(p, extents, part["pattern"], part["colors"])
    return total / len(offsets)


def _shade(normals_world: np.ndarray, shading: dict) -> np.ndarray:  # [M, 3] -> [M, 1]
    light = np.asarray(shading["light_dir"], dtype=np.float64)
    light = light / np.linalg.norm(light)
    return shading["ambient"] + shading["diffuse"] * np.clip(normals_world @ light, 0.0, None)[:, None]


def _splat_frames(
    n: np.ndarray,  # [M, 3] unit normals
    pu: np.ndarray,  # [M, 3] dp/du
    pv: np.ndarray,  # [M, 3] dp/dv
    du: float,  # grid cell size in u
    dv: float,
    spacing: float,  # mean sample spacing on this patch
    curvature: float,  # the part's curvature radius
) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal frames [M, 3, 3] (columns: tangent 1, tangent 2, normal) and sigmas [M, 3]."""
    e1 = pu - (pu * n).sum(-1, keepdims=True) * n
    norm = np.linalg.norm(e1, axis=-1, keepdims=True)
    # Degenerate tangents (cone tips, poles): any direction in the tangent plane will do.
    fallback = np.cross(n, np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]))
    fallback /= np.linalg.norm(fallback, axis=-1, keepdims=True)
    e1 = np.where(norm > 1e-9, e1 / np.maximum(norm, 1e-12), fallback)
    e2 = np.cross(n, e1)
    s1 = np.abs((pu * e1).sum(-1)) * du
    s2 = np.abs((pv * e2).sum(-1)) * dv
    # Near parameter singularities the Jacobian misstates the cell; keep splats near the mean.
    # Also cap at a fraction of the curvature radius, or splats would stand off thin tubes.
    lo = 0.4 * SPLAT_SIZE * spacing
    hi = max(min(3.0 * SPLAT_SIZE * spacing, 0.45 * curvature), lo)
    s1, s2 = (np.clip(SPLAT_SIZE * s, lo, hi) for s in (s1, s2))
    sigmas = np.stack([s1, s2, THICKNESS * np.minimum(s1, s2)], -1)
    return np.stack([e1, e2, n], axis=-1), sigmas


def _share_budget(total: int, exposed: np.ndarray, curvature: np.ndarray) -> np.ndarray:  # [P] -> [P]
    """Split ``total`` samples over parts: equal spacing everywhere, except that thin parts
    (tubes, legs) get a spacing of at most half their curvature radius so their splats do not
    stick out — but never more than 9x the density of the rest, so a tiny part cannot eat
    the budget. The common spacing is found by bisection."""

    def counts(spacing: float) -> np.ndarray:
        local = np.clip(0.5 * curvature, spacing / 3.0, spacing)
        return exposed / local**2

    lo, hi = 1e-6, 1e3
    for _ in range(100):  # counts() decreases in spacing; bisect in log space
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if counts(mid).sum() > total else (lo, mid)
    share = total * counts(hi) / counts(hi).sum()
    # Largest-remainder rounding: integers that sum to ``total`` (so tiny budgets still work).
    out = np.floor(share).astype(int)
    out[np.argsort(out - share)[: total - out.sum()]] += 1
    return out


def gaussians_from_spec(spec: dict, num_gaussians: int, rng: np.random.Generator) -> Gaussians:
    """Sample a spec's surfaces into exactly ``num_gaussians`` Gaussians (see module docstring)."""
    if int(num_gaussians) != num_gaussians or num_gaussians < 1:
        raise ValueError(f"num_gaussians must be a positive integer, got {num_gaussians!r}")
    num_gaussians = int(num_gaussians)
    R_obj = quat_to_matrix(np.asarray(spec["object_rotation"], dtype=np.float64))
    shading = spec.get("shading", SHADING)
    parts = [part_transform(p) for p in spec["parts"]]

    def buried(points: np.ndarray, owner: int, margin: float) -> np.ndarray:  # object-frame [M, 3] -> bool [M]
        mask = np.zeros(len(points), dtype=bool)
        for j, (prim, R, t) in enumerate(parts):
            if j != owner:
                mask |= prim.inside((points - t) @ R, margin)  # R^T (x - t), row-vector form
        return mask

    # Exposed area per part, from a fixed grid (no randomness: the budget split is part of the
    # object's identity, not of the sampling noise).
    stats = [patch_stats(prim) for prim, _, _ in parts]
    exposed_frac = []
    for i, (prim, R, t) in enumerate(parts):
        u, v = grid_uv(20, 20)
        pts = np.concatenate([patch(u, v)[0] for patch in prim.patches()])
        weights = np.repeat(stats[i][0] / stats[i][0].sum(), len(u)) / len(u)
        exposed_frac.append(float((weights * ~buried(pts @ R.T + t, i, 0.0)).sum()))
    areas = np.array([s[0].sum() for s in stats])
    exposed = areas * np.array(exposed_frac)
    if exposed.sum() <= 0:  # cannot happen with object_spec's sizes; keep hand-made specs working
        exposed_frac, exposed = [1.0] * len(parts), areas
    budget = _share_budget(num_gaussians, exposed, np.array([prim.curvature_radius for prim, _, _ in parts]))

    chunks = {k: [] for k in ("local", "normal", "frame", "sigma", "part")}

    def add(i, p, n, frames, sigmas):
        chunks["local"].append(p)
        chunks["normal"].append(n)
        chunks["frame"].append(frames)
        chunks["sigma"].append(sigmas)
        chunks["part"].append(np.full(len(p), i))

    cells = []  # (part, patch index, du, dv, spacing, exposed area) for top-up samples
    for i, (prim, R, t) in enumerate(parts):
        if budget[i] == 0:
            continue
        patch_areas, lu, lv = stats[i]
        total = budget[i] / max(exposed_frac[i], 1e-3)  # sample the whole part, buried bits get culled
        for k, patch in enumerate(prim.patches()):
            m = max(int(round(total * patch_areas[k] / patch_areas.sum())), 1)
            nu = int(np.clip(round(math.sqrt(m * lu[k] / max(lv[k], 1e-12))), 1, m))
            nv = m // nu
            u, v = grid_uv(nu, nv, rng, jitter=0.7)
            extra = m - nu * nv  # the remainder goes to uniform random spots
            u, v = np.concatenate([u, rng.random(extra)]), np.concatenate([v, rng.random(extra)])
            spacing = math.sqrt(patch_areas[k] / m)
            p, n, pu, pv = eval_patch(patch, u, v)
            frames, sigmas = _splat_frames(n, pu, pv, 1.0 / nu, 1.0 / nv, spacing, prim.curvature_radius)
            keep = ~buried(p @ R.T + t, i, 0.5 * spacing)
            add(i, p[keep], n[keep], frames[keep], sigmas[keep])
            cells.append((i, k, 1.0 / nu, 1.0 / nv, spacing, patch_areas[k] * exposed_frac[i]))

    count = sum(len(c) for c in chunks["local"])
    if count < num_gaussians:  # top up with uniform random samples on exposed surface
        weights = np.array([c[5] for c in cells])
        for attempt in range(1000):
            if count >= num_gaussians:
                break
            need = num_gaussians - count
            for idx in rng.choice(len(cells), size=need, p=weights / weights.sum()):
                i, k, du, dv, spacing, _ = cells[idx]
                prim, R, t = parts[i]
                p, n, pu, pv = eval_patch(prim.patches()[k], rng.random(1), rng.random(1))
                if buried(p @ R.T + t, i, 0.5 * spacing)[0] and attempt < 999:  # bounded rejection
                    continue
                add(i, p, n, *_splat_frames(n, pu, pv, du, dv, spacing, prim.curvature_radius))
                count += 1

    cat = {k: np.concatenate(v) for k, v in chunks.items()}
    if count > num_gaussians:  # drop a few at random (a small fraction: holes stay invisible)
        keep = np.sort(rng.choice(count, size=num_gaussians, replace=False))
        cat = {k: v[keep] for k, v in cat.items()}

    # Colours from part-local positions, then part -> object -> normalised world.
    rgb = np.empty((num_gaussians, 3))
    means = np.empty((num_gaussians, 3))
    rot = np.empty((num_gaussians, 3, 3))
    normals = np.empty((num_gaussians, 3))
    for i, (prim, R, t) in enumerate(parts):
        sel = cat["part"] == i
        spec_part = spec["parts"][i]
        rgb[sel] = _splat_color(cat["local"][sel], cat["frame"][sel], cat["sigma"][sel], prim.extents, spec_part)
        means[sel] = (cat["local"][sel] @ R.T + t) @ R_obj.T
        rot[sel] = R_obj @ R @ cat["frame"][sel]
        normals[sel] = cat["normal"][sel] @ (R_obj @ R).T
    rgb = np.clip(rgb * _shade(normals, shading), 0.0, 1.0)
    norm = spec["normalization"]
    means = (means - np.asarray(norm["center"])) * norm["scale"]
    scales = cat["sigma"] * norm["scale"]

    f32 = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # noqa: E731
    return Gaussians.from_activated(
        means=f32(means),
        quats=f32(matrix_to_quat(rot)),
        scales=f32(scales),
        opacities=torch.full((num_gaussians,), OPACITY, dtype=torch.float32),
        rgb=f32(rgb),
    )
