"""Read and write Gaussians as PLY files in the standard 3DGS layout.

One ``vertex`` element, binary little endian, float32 properties in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}
    opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

The values are the *raw* parameters of :class:`~dd3g_core.gaussians.Gaussians` (logit opacity,
log scale, unnormalised wxyz quaternion, ``f_dc = sh[:, 0, :]``), so a round trip is exact.
``f_rest`` is channel-major as the 3DGS reference code writes it (``features_rest.transpose(1, 2)
.flatten(1)``): ``f_rest_{c*(K-1) + (k-1)} = sh[:, k, c]``. Normals are written as zeros (3DGS
does the same) and ignored on load.

Loading is lenient about what tools omit — ``nx ny nz`` and ``f_rest`` are optional (LGM writes
14 floats per Gaussian), property order does not matter, extra properties are ignored — and
strict about what would silently corrupt a scene: every problem is a ``ValueError`` that says
what is wrong. Files with zero Gaussians are valid both ways (an empty container, which renders
as pure background).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from .gaussians import Gaussians
from .io import atomic_path

POSITION = ("x", "y", "z")
NORMAL = ("nx", "ny", "nz")
DC = ("f_dc_0", "f_dc_1", "f_dc_2")
SCALE = ("scale_0", "scale_1", "scale_2")
ROT = ("rot_0", "rot_1", "rot_2", "rot_3")
REQUIRED = POSITION + DC + ("opacity",) + SCALE + ROT
SH_COUNTS = (1, 4, 9, 16)  # K = (degree + 1)^2 for degrees 0..3


def ply_property_names(sh_count: int) -> list[str]:
    """Property names, in file order, for Gaussians with ``sh_count`` = K coefficients."""
    if sh_count not in SH_COUNTS:
        raise ValueError(f"SH coefficient count must be one of {SH_COUNTS}, got {sh_count}")
    rest = [f"f_rest_{i}" for i in range(3 * (sh_count - 1))]
    return [*POSITION, *NORMAL, *DC, *rest, "opacity", *SCALE, *ROT]


def save_ply(gaussians: Gaussians, path: str | os.PathLike) -> None:
    """Write an unbatched container (means [N, 3], sh [N, K, 3]) as a 3DGS PLY file.

    Values are stored as float32 (a float64 container is rounded). NaN/Inf values are refused,
    because nothing downstream can read them back; call ``check_finite`` to locate them.
    """
    if gaussians.means.ndim != 2:
        raise ValueError(
            f"save_ply writes one scene; got a batched container with batch shape "
            f"{tuple(gaussians.batch_shape)} (index a scene first, e.g. gaussians[0])"
        )
    gaussians.check_finite()
    g = gaussians.detach().to("cpu", torch.float32)
    n, k = g.num_gaussians, g.sh.shape[-2]
    rest = g.sh[:, 1:, :].transpose(1, 2).reshape(n, 3 * (k - 1))  # [N, 3, K-1] channel-major
    columns = torch.cat(
        [g.means, torch.zeros(n, 3), g.sh[:, 0, :], rest, g.opacity_logits[:, None], g.log_scales, g.quats], dim=1
    ).numpy()  # [N, 3 + 3 + 3 + 3(K-1) + 1 + 3 + 4]
    names = ply_property_names(k)
    records = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        records[name] = columns[:, i]
    ply = PlyData([PlyElement.describe(records, "vertex")], text=False, byte_order="<")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # readers never see a half-written file
        ply.write(f)


def load_ply(path: str | os.PathLike, drop_nonfinite: bool = False) -> Gaussians:
    """Read a 3DGS-layout PLY file -> unbatched float32 :class:`Gaussians` (sh [N, K, 3]).

    ``drop_nonfinite=True`` drops Gaussians with NaN/Inf in any used property instead of
    raising. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for anything
    that is not a usable Gaussian PLY.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such PLY file: {str(path)!r}")
    try:
        with open(path, "rb") as f:
            ply = PlyData.read(f, mmap=False)
            # plyfile reads elements lazily only with mmap; touching the data here makes a
            # truncated body fail inside this try block.
            for element in ply.elements:
                element.data  # noqa: B018
    except Exception as e:  # plyfile raises several types (parse errors, EOF, struct errors)
        raise ValueError(f"{path}: not a readable PLY file or truncated ({type(e).__name__}: {e})") from e

    names_of = {el.name: el for el in ply.elements}
    if "vertex" not in names_of:
        raise ValueError(f"{path}: PLY has no 'vertex' element (elements: {sorted(names_of) or 'none'})")
    vertex = names_of["vertex"]
    props = {p.name: p for p in vertex.properties}

    missing = [name for name in REQUIRED if name not in props]
    if missing:
        raise ValueError(f"{path}: vertex element is missing required properties: {', '.join(missing)}")

    rest_names = [n for n in props if n.startswith("f_rest_")]
    if any(not n[7:].isdigit() for n in rest_names):
        raise ValueError(f"{path}: malformed f_rest property names: {rest_names}")
    rest_names.sort(key=lambda n: int(n[7:]))  # 3DGS sorts numerically, not by file order
    if rest_names != [f"f_rest_{i}" for i in range(len(rest_names))]:
        raise ValueError(f"{path}: f_rest properties must be numbered 0..M-1 without gaps, got {rest_names}")
    m = len(rest_names)
    if m % 3 or (m // 3 + 1) not in SH_COUNTS:
        raise ValueError(f"{path}: {m} f_rest properties; expected 3*(K-1) for K in {SH_COUNTS} (0, 9, 24 or 45)")
    k = m // 3 + 1

    used = list(REQUIRED) + rest_names
    bad_types = []
    for name in used:
        dtype = vertex.data.dtype[name]
        if dtype.kind == "O":  # a list property
            bad_types.append(f"{name} (list)")
        elif not (np.issubdtype(dtype, np.floating) or np.can_cast(dtype, np.float32, casting="safe")):
            bad_types.append(f"{name} ({dtype.name})")
    if bad_types:
        raise ValueError(
            f"{path}: properties with types that cannot be cast to float32 exactly: {', '.join(bad_types)}"
        )

    # float64 files are rounded to float32 here; out-of-range values become Inf and are
    # caught by the finiteness check below.
    with np.errstate(over="ignore"):
        table = np.zeros((len(vertex.data), len(used)), dtype=np.float32)  # [N, P]
        for i, name in enumerate(used):
            table[:, i] = vertex[name]
    finite = np.isfinite(table).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        if not drop_nonfinite:
            raise ValueError(
                f"{path}: {bad.size} of {len(finite)} Gaussians have NaN/Inf values (first at index {bad[0]}); "
                "pass drop_nonfinite=True to drop them"
            )
        table = table[finite]

    col = {name: i for i, name in enumerate(used)}
    pick = lambda names: torch.from_numpy(np.ascontiguousarray(table[:, [col[n] for n in names]]))  # noqa: E731
    n = table.shape[0]
    dc = pick(DC)  # [N, 3]
    rest = pick(rest_names).reshape(n, 3, k - 1).transpose(1, 2)  # [N, K-1, 3]
    return Gaussians(
        means=pick(POSITION),
        quats=pick(ROT),
        log_scales=pick(SCALE),
        opacity_logits=pick(("opacity",))[:, 0].contiguous(),
        sh=torch.cat([dc[:, None, :], rest], dim=1).contiguous(),
    )
