"""Parametric surface primitives for the procedural world (float64 numpy, no torch).

Every primitive lives in its own local frame, centred at the origin, with its axis of symmetry
(if any) along **+y**. Its surface is a list of *patches*; a patch maps ``(u, v)`` in the unit
square to surface points and outward unit normals. The maps are chosen so that a uniform
``(u, v)`` grid gives roughly equal-area cells (``z = 1 - 2u`` on spheres, ``r = sqrt(u)`` on
discs, an inverse-CDF for the torus tube), which is what lets :mod:`.procedural` place evenly
spaced surface Gaussians from a jittered grid.

Each primitive also answers ``inside(points, margin)`` (strictly inside by more than
``margin``), used to drop Gaussians buried inside another part of the same object, and is
described by a json-serialisable ``params`` dict so a spec can rebuild it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

Patch = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # u [M], v [M] -> p [M,3], n [M,3]

TWO_PI = 2.0 * math.pi


def _unit(x: np.ndarray) -> np.ndarray:  # [M, 3] -> [M, 3]
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _ring(rho: np.ndarray, y: np.ndarray, phi: np.ndarray) -> np.ndarray:  # -> [M, 3]
    """Points at radius ``rho`` from the y axis, height ``y``, angle ``phi`` (x = cos, z = sin)."""
    return np.stack([rho * np.cos(phi), y, rho * np.sin(phi)], axis=-1)


def _disc(y: float, radius: float, facing: float) -> Patch:
    """A flat disc at height ``y`` facing +y (``facing=1``) or -y; r = R sqrt(u) keeps areas equal."""

    def patch(u, v):
        p = _ring(radius * np.sqrt(u), np.full_like(u, y), TWO_PI * v)
        n = np.zeros_like(p)
        n[:, 1] = facing
        return p, n

    return patch


@dataclass(frozen=True)
class Primitive:
    kind: ClassVar[str] = ""

    def patches(self) -> list[Patch]:
        raise NotImplementedError

    def inside(self, p: np.ndarray, margin: float = 0.0) -> np.ndarray:  # [M, 3] -> bool [M]
        raise NotImplementedError

    @property
    def params(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}

    @property
    def extents(self) -> np.ndarray:  # [3]
        """Half-extents of the local bounding box (patterns are laid out relative to them)."""
        raise NotImplementedError

    @property
    def curvature_radius(self) -> float:
        """The smallest radius of curvature that matters for splat sizes (tube radius of a
        torus, radius of a thin cylinder...): splats much wider than it would stick out."""
        raise NotImplementedError

    @property
    def size(self) -> float:
        """A characteristic length (the largest half-extent), for sizing attachments."""
        return float(self.extents.max())

    @property
    def half_height(self) -> float:
        """Half-extent along the local y axis (how far the part reaches along its axis)."""
        return float(self.extents[1])


@dataclass(frozen=True)
class Ellipsoid(Primitive):
    kind: ClassVar[str] = "ellipsoid"
    rx: float
    ry: float
    rz: float

    def patches(self):
        radii = np.array([self.rx, self.ry, self.rz])

        def patch(u, v):
            c = 1.0 - 2.0 * u  # cos(polar angle) uniform = equal-area bands on the sphere
            unit = _ring(np.sqrt(np.clip(1.0 - c * c, 0.0, 1.0)), c, TWO_PI * v)
            return unit * radii, _unit(unit / radii)  # normal of an ellipsoid: grad of sum (p/r)^2

        return [patch]

    def inside(self, p, margin=0.0):
        radii = np.array([self.rx, self.ry, self.rz]) - margin
        if (radii <= 0).any():
            return np.zeros(len(p), dtype=bool)
        return ((p / radii) ** 2).sum(-1) < 1.0

    @property
    def extents(self):
        return np.array([self.rx, self.ry, self.rz])

    @property
    def curvature_radius(self):
        return min(self.rx, self.ry, self.rz)


@dataclass(frozen=True)
class Box(Primitive):
    kind: ClassVar[str] = "box"
    hx: float
    hy: float
    hz: float

    def patches(self):
        h = np.array([self.hx, self.hy, self.hz])
        out = []
        for axis in range(3):
            a, b = [i for i in range(3) if i != axis]
            for sign in (-1.0, 1.0):

                def face(u, v, axis=axis, a=a, b=b, sign=sign):
                    p = np.zeros((len(u), 3))
                    p[:, axis] = sign * h[axis]
                    p[:, a] = (2.0 * u - 1.0) * h[a]
                    p[:, b] = (2.0 * v - 1.0) * h[b]
                    n = np.zeros_like(p)
                    n[:, axis] = sign
                    return p, n

                out.append(face)
        return out

    def inside(self, p, margin=0.0):
        return (np.abs(p) < np.array([self.hx, self.hy, self.hz]) - margin).all(-1)

    @property
    def extents(self):
        return np.array([self.hx, self.hy, self.hz])

    @property
    def curvature_radius(self):  # flat faces, but thin plates need their edges resolved
        return min(self.hx, self.hy, self.hz)


@dataclass(frozen=True)
class Frustum(Primitive):
    """A capped truncated cone along y: radius ``r_bottom`` at y = -h, ``r_top`` at y = +h.

    ``r_top == r_bottom`` is a cylinder and ``r_top == 0`` a pointed cone; :class:`Cylinder`
    and :class:`Cone` name those two cases for specs.
    """

    kind: ClassVar[str] = "frustum"
    r_bottom: float
    r_top: float
    h: float

    def patches(self):
        rb, rt, h = self.r_bottom, self.r_top, self.h
        slope = (rb - rt) / (2.0 * h)  # d(radius)/d(-y)

        def side(u, v):
            # The side's area density grows linearly with the radius; invert its CDF so equal
            # steps in u cover equal areas (t = 0 at the bottom rim, 1 at the top).
            a, b = 0.5 * (rt - rb), rb
            if abs(a) < 1e-9 * max(b, 1e-9):
                t = u
            else:
                t = (-b + np.sqrt(np.maximum(b * b + 4.0 * a * u * (a + b), 0.0))) / (2.0 * a)
            phi = TWO_PI * v
            p = _ring(rb + (rt - rb) * t, -h + 2.0 * h * t, phi)
            n = _unit(np.stack([np.cos(phi), np.full_like(phi, slope), np.sin(phi)], -1))
            return p, n

        patches = [side, _disc(-h, rb, -1.0)]
        if rt > 0:
            patches.append(_disc(h, rt, 1.0))
        return patches

    def inside(self, p, margin=0.0):
        y = p[:, 1]
        t = np.clip((y + self.h) / (2.0 * self.h), 0.0, 1.0)
        radius = self.r_bottom + (self.r_top - self.r_bottom) * t
        rho = np.hypot(p[:, 0], p[:, 2])
        # Distance to a slanted wall is (radius - rho) cos(slant); using it keeps the margin honest.
        cos_slant = 1.0 / math.sqrt(1.0 + ((self.r_bottom - self.r_top) / (2.0 * self.h)) ** 2)
        return (np.abs(y) < self.h - margin) & ((radius - rho) * cos_slant > margin)

    @property
    def extents(self):
        r = max(self.r_bottom, self.r_top)
        return np.array([r, self.h, r])

    @property
    def curvature_radius(self):
        return min(max(self.r_bottom, self.r_top), self.h)


@dataclass(frozen=True)
class Cylinder(Frustum):
    kind: ClassVar[str] = "cylinder"


@dataclass(frozen=True)
class Cone(Frustum):
    kind: ClassVar[str] = "cone"


@dataclass(frozen=True)
class Torus(Primitive):
    """A ring in the xz plane around the y axis: ``major`` ring radius, ``minor`` tube radius."""

    kind: ClassVar[str] = "torus"
    major: float
    minor: float

    def patches(self):
        R, r = self.major, self.minor

        def patch(u, v):
            # The outer half of the tube has more area (density ∝ R + r cos beta); invert the
            # CDF (R beta + r sin beta) / (2 pi R) = u with a few Newton steps.
            target = TWO_PI * R * u
            beta = TWO_PI * u
            for _ in range(8):
                beta = beta - (R * beta + r * np.sin(beta) - target) / (R + r * np.cos(beta))
            phi = TWO_PI * v
            n = _ring(np.cos(beta), np.sin(beta), phi)
            return _ring(R + r * np.cos(beta), r * np.sin(beta), phi), n

        return [patch]

    def inside(self, p, margin=0.0):
        rho = np.hypot(p[:, 0], p[:, 2])
        return np.hypot(rho - self.major, p[:, 1]) < self.minor - margin

    @property
    def extents(self):
        return np.array([self.major + self.minor, self.minor, self.major + self.minor])

    @property
    def curvature_radius(self):
        return self.minor


@dataclass(frozen=True)
class Capsule(Primitive):
    """A cylinder of half-length ``h`` along y with hemispherical caps of radius ``radius``."""

    kind: ClassVar[str] = "capsule"
    radius: float
    h: float

    def patches(self):
        r, h = self.radius, self.h

        def side(u, v):
            phi = TWO_PI * v
            return _ring(np.full_like(u, r), h * (2.0 * u - 1.0), phi), _ring(np.ones_like(u), np.zeros_like(u), phi)

        def cap(sign):
            def patch(u, v):
                c = u  # height above the cap's base, uniform = equal-area bands
                n = _ring(np.sqrt(np.clip(1.0 - c * c, 0.0, 1.0)), sign * c, TWO_PI * v)
                return n * r + np.array([0.0, sign * h, 0.0]), n

            return patch

        return [side, cap(1.0), cap(-1.0)]

    def inside(self, p, margin=0.0):
        y = np.clip(p[:, 1], -self.h, self.h)
        return np.linalg.norm(p - np.stack([np.zeros_like(y), y, np.zeros_like(y)], -1), axis=-1) < self.radius - margin

    @property
    def extents(self):
        return np.array([self.radius, self.h + self.radius, self.radius])

    @property
    def curvature_radius(self):
        return self.radius


PRIMITIVES: dict[str, type[Primitive]] = {
    cls.kind: cls for cls in (Ellipsoid, Box, Cylinder, Cone, Frustum, Torus, Capsule)
}


def make_primitive(kind: str, params: dict) -> Primitive:
    if kind not in PRIMITIVES:
        raise ValueError(f"unknown primitive {kind!r}; choose from {sorted(PRIMITIVES)}")
    return PRIMITIVES[kind](**params)
