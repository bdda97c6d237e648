"""Seeded object descriptions ("specs") for the procedural world, and the seed splits.

A spec is a plain json-serialisable dict; everything random about an object's *shape and
look* is decided here from ``numpy.random.default_rng([seed, 0])`` (no global RNG), and
:mod:`.procedural` turns a spec into Gaussians. Layout of a spec::

    {"version": 1, "seed": 3, "split": "train",
     "parts": [{"role": "body" | "attachment" | "mirror", "primitive": "cylinder",
                "params": {...}, "position": [x, y, z], "rotation": [w, x, y, z],
                "pattern": {"kind": "stripes", "axis": 1, "count": 5, "offset": 0.3, ...},
                "colors": [[r, g, b], ...]},           # linear 0..1, one or two colours
               ...],                                     # 1 to 4 parts, body first
     "object_rotation": [w, x, y, z],                    # yaw + a small tilt of the whole
     "normalization": {"center": [x, y, z], "scale": s}, # x_final = (R_obj x - center) * s
     "shading": {"ambient": a, "diffuse": d, "light_dir": [x, y, z]},
     "background": [r, g, b]}                            # 0..255 colour-key backdrop

Part transforms map part-local points into the object frame: ``x = R(rotation) p + position``.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from .geometry import (
    axis_angle_matrix,
    eval_patch,
    frame_from_axis,
    matrix_to_quat,
    patch_stats,
    quat_to_matrix,
    surface_grid,
)
from .primitives import PRIMITIVES, Primitive, make_primitive

SPEC_VERSION = 1
SPLITS: dict[str, tuple[int, int]] = {"train": (0, 1_000_000), "heldout": (1_000_000, 1_100_000)}
OBJECT_RADIUS = 0.45  # surface points fit this sphere; splat footprints reach about 0.5
# Fixed, world-space baked lighting: flat SH-0 colours give no shape cues, so a soft Lambert
# term from a light above-front-right is baked into the colours (identical from every camera).
SHADING = {"ambient": 0.6, "diffuse": 0.4, "light_dir": [0.3906, 0.7812, 0.4870]}
PATTERNS = ("solid", "stripes", "radial_stripes", "checker", "gradient", "two_tone")
# Chroma-key candidates for the backdrop (0..255). Object colours are kept below full
# saturation/value (see _random_color), so at least one key is always clearly separable.
BACKGROUND_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 255, 0),
    (0, 0, 255),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 0),
    (255, 0, 0),
)

_BODY_KINDS = ("ellipsoid", "box", "cylinder", "cone", "capsule", "torus")
_BODY_P = (0.24, 0.2, 0.2, 0.1, 0.16, 0.1)
_ATTACH_KINDS = ("ellipsoid", "box", "cylinder", "cone", "capsule", "torus")
_ATTACH_P = (0.22, 0.14, 0.2, 0.18, 0.14, 0.12)


# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def split_of(seed: int) -> str:
    """Which split a seed belongs to; ``ValueError`` outside every split's range."""
    seed = _check_seed(seed)
    for name, (lo, hi) in SPLITS.items():
        if lo <= seed < hi:
            return name
    raise ValueError(f"seed {seed} is in no split {SPLITS}")


def split_seeds(split: str, count: int, start: int = 0) -> list[int]:
    """``count`` consecutive seeds of ``split``, beginning ``start`` seeds into its range."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    lo, hi = SPLITS[split]
    if count < 0 or start < 0 or lo + start + count > hi:
        raise ValueError(f"split {split!r} has {hi - lo} seeds; cannot take {count} from offset {start}")
    return list(range(lo + start, lo + start + count))


# --------------------------------------------------------------------------------------
# Random choices
# --------------------------------------------------------------------------------------


def _r(x, nd: int = 4):
    """Round for a readable spec; the geometry is built from the rounded values."""
    return [round(float(v), nd) for v in np.asarray(x).reshape(-1)] if np.ndim(x) else round(float(x), nd)


def _random_color(rng: np.random.Generator) -> list[float]:
    if rng.random() < 0.15:  # a (slightly tinted) neutral: white, greys, near-black
        level = rng.uniform(0.12, 0.92)
        return _r(np.clip(level + rng.uniform(-0.03, 0.03, 3), 0.0, 1.0))
    hue, sat, val = rng.random(), rng.uniform(0.35, 0.85), rng.uniform(0.45, 0.92)
    return _r(colorsys.hsv_to_rgb(hue, sat, val))


def _random_appearance(rng: np.random.Generator, palette: list[list[float]]) -> tuple[dict, list]:
    kind = str(rng.choice(PATTERNS, p=(0.32, 0.16, 0.1, 0.12, 0.15, 0.15)))
    first = int(rng.integers(len(palette)))
    colors = [palette[first]]
    if kind != "solid":
        if rng.random() < 0.6:
            colors.append(palette[(first + 1 + int(rng.integers(len(palette) - 1))) % len(palette)])
        else:  # a lighter or darker variant of the same colour
            c = np.asarray(palette[first])
            colors.append(_r(np.clip(c * 0.45 if c.mean() > 0.5 else c + (1 - c) * 0.55, 0.0, 1.0)))
    pattern = {"kind": kind}
    if kind in ("stripes", "gradient", "two_tone"):
        pattern["axis"] = int(rng.choice(3, p=(0.25, 0.5, 0.25)))
    if kind in ("stripes", "radial_stripes", "checker"):
        pattern["count"] = int(rng.integers(2, 7)) * (2 if kind == "radial_stripes" else 1)
        pattern["offset"] = _r(rng.random())
    if kind == "two_tone":
        pattern["split"] = _r(rng.uniform(-0.35, 0.35))
    return pattern, colors


def _random_primitive(rng: np.random.Generator, kind: str, scale: float, slender: bool) -> Primitive:
    """Dimensions proportional to ``scale``; ``slender`` makes legs/horns/handles, not blobs."""
    u = lambda lo, hi: scale * rng.uniform(lo, hi)  # noqa: E731
    thin = (0.18, 0.4) if slender else (0.45, 0.9)
    if kind == "ellipsoid":
        params = dict(rx=u(0.5, 1.0), ry=u(0.5, 1.0), rz=u(0.5, 1.0))
    elif kind == "box":
        params = dict(hx=u(0.35, 1.0), hy=u(0.35, 1.0), hz=u(0.35, 1.0))
    elif kind == "cylinder":
        r = u(*thin)
        params = dict(r_bottom=r, r_top=r, h=u(0.5, 1.1))
    elif kind == "cone":
        rb = u(*thin)
        params = dict(r_bottom=rb, r_top=0.0 if rng.random() < 0.6 else rb * rng.uniform(0.25, 0.7), h=u(0.5, 1.1))
    elif kind == "capsule":
        params = dict(radius=u(*thin) * 0.8, h=u(0.3, 0.8))
    elif kind == "torus":
        major = u(0.55, 0.9)
        params = dict(major=major, minor=major * rng.uniform(0.18, 0.4))
    else:
        raise ValueError(kind)
    return make_primitive(kind, {k: _r(v) for k, v in params.items()})


def _surface_point(rng: np.random.Generator, prim: Primitive, prefer_top: bool) -> tuple[np.ndarray, np.ndarray]:
    """An area-uniform random point and normal on ``prim`` (best of 8 by height if ``prefer_top``)."""
    areas = patch_stats(prim, grid=12)[0]
    idx = rng.choice(len(areas), size=8, p=areas / areas.sum())
    ps, ns = zip(*(eval_patch(prim.patches()[i], rng.random(1), rng.random(1))[:2] for i in idx))
    ps, ns = np.concatenate(ps), np.concatenate(ns)
    best = int(np.argmax(ns[:, 1])) if prefer_top else 0
    return ps[best], ns[best]


def _part(role: str, prim: Primitive, rotation: np.ndarray, position, appearance) -> dict:
    pattern, colors = appearance
    return {
        "role": role,
        "primitive": prim.kind,
        "params": prim.params,
        "position": _r(position),
        "rotation": _r(matrix_to_quat(rotation), 6),
        "pattern": pattern,
        "colors": colors,
    }


def part_transform(part: dict) -> tuple[Primitive, np.ndarray, np.ndarray]:  # prim, R [3,3], t [3]
    """Rebuild a spec part: its primitive and the local->object transform ``x = R p + t``."""
    return (
        make_primitive(part["primitive"], part["params"]),
        quat_to_matrix(np.asarray(part["rotation"], dtype=np.float64)),
        np.asarray(part["position"], dtype=np.float64),
    )


# --------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------


def object_spec(seed: int) -> dict:
    """The json-serialisable description of procedural object ``seed`` (deterministic)."""
    seed = _check_seed(seed)
    rng = np.random.default_rng([seed, 0])
    palette = [_random_color(rng) for _ in range(3)]

    body = _random_primitive(rng, str(rng.choice(_BODY_KINDS, p=_BODY_P)), scale=0.5, slender=False)
    parts = [_part("body", body, np.eye(3), np.zeros(3), _random_appearance(rng, palette))]
    num_parts = int(rng.choice([1, 2, 3, 4], p=(0.15, 0.3, 0.3, 0.25)))
    while len(parts) < num_parts:
        kind = str(rng.choice(_ATTACH_KINDS, p=_ATTACH_P))
        prim = _random_primitive(rng, kind, scale=body.size * rng.uniform(0.3, 0.6), slender=kind != "ellipsoid")
        p, n = _surface_point(rng, body, prefer_top=rng.random() < 0.4)
        spin = rng.uniform(0, 2 * math.pi)
        if kind == "torus" and rng.random() < 0.6:  # a handle: ring plane contains the normal
            side = np.cross(n, rng.normal(size=3))
            R, offset = frame_from_axis(side, 0.0), prim.major * rng.uniform(0.3, 0.6)
        else:  # sticks out along the normal, partly buried so it looks attached
            R, offset = frame_from_axis(n, spin), prim.half_height * rng.uniform(0.25, 0.8)
        t = p + n * offset
        same_as_body = rng.random() >= 0.7
        appearance = (parts[0]["pattern"], parts[0]["colors"]) if same_as_body else _random_appearance(rng, palette)
        parts.append(_part("attachment", prim, R, t, appearance))
        # Mirror pairs (ears, wheels, arms) make objects look designed rather than random.
        if len(parts) < num_parts and abs(t[0]) > 0.25 * body.size and rng.random() < 0.5:
            M = np.diag([-1.0, 1.0, 1.0])
            parts.append(_part("mirror", prim, M @ R @ M, M @ t, appearance))

    yaw, pitch, roll = rng.uniform(0, 360), rng.uniform(-20, 20), rng.uniform(-20, 20)
    R_obj = (
        axis_angle_matrix([0, 1, 0], math.radians(yaw))
        @ axis_angle_matrix([1, 0, 0], math.radians(pitch))
        @ axis_angle_matrix([0, 0, 1], math.radians(roll))
    )
    spec = {
        "version": SPEC_VERSION,
        "seed": seed,
        "split": split_of(seed) if seed < max(hi for _, hi in SPLITS.values()) else None,
        "parts": parts,
        "object_rotation": _r(matrix_to_quat(R_obj), 6),
        "shading": dict(SHADING),
    }
    spec["normalization"] = _normalization(spec)
    spec["background"] = list(pick_background(spec_colors(spec)))
    return spec


def _normalization(spec: dict) -> dict:
    """Centre the object's bounding box at the origin and scale it into ``OBJECT_RADIUS``."""
    R_obj = quat_to_matrix(np.asarray(spec["object_rotation"]))
    pts = []
    for part in spec["parts"]:
        prim, R, t = part_transform(part)
        pts.append((surface_grid(prim) @ R.T + t) @ R_obj.T)
    pts = np.concatenate(pts)
    center = 0.5 * (pts.min(0) + pts.max(0))
    radius = np.linalg.norm(pts - center, axis=-1).max()
    return {"center": _r(center, 6), "scale": _r(OBJECT_RADIUS / radius, 6)}


def spec_colors(spec: dict) -> np.ndarray:  # -> [M, 3] in 0..1
    """Every colour the object can show: base colours, their midpoints, and their shaded tones."""
    base = [np.asarray(c, dtype=np.float64) for part in spec["parts"] for c in part["colors"]]
    for part in spec["parts"]:
        if len(part["colors"]) == 2:
            base.append(0.5 * (np.asarray(part["colors"][0]) + np.asarray(part["colors"][1])))
    base = np.stack(base)
    shading = spec.get("shading", SHADING)
    return np.concatenate([base, base * shading["ambient"]])


def pick_background(object_colors: np.ndarray) -> tuple[int, int, int]:
    """The palette key whose smallest RGB distance to any object colour is largest."""
    keys = np.asarray(BACKGROUND_PALETTE, dtype=np.float64)
    dist = np.linalg.norm(keys[:, None, :] - 255.0 * np.asarray(object_colors)[None], axis=-1).min(1)
    return tuple(int(c) for c in BACKGROUND_PALETTE[int(np.argmax(dist))])


def background_color_for(seed: int) -> tuple[int, int, int]:
    """The plain backdrop (0..255 RGB) to composite object ``seed`` on for colour-key matting."""
    return tuple(object_spec(seed)["background"])


assert set(_BODY_KINDS) | set(_ATTACH_KINDS) <= set(PRIMITIVES)
