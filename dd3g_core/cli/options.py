"""Option parsing shared by every ``dd3g`` subcommand: bounded sizes, backgrounds, view options.

Every size option is bounded (:data:`LIMITS`, checked by :func:`bounded_int` / :func:`bounded_float`
while parsing) and a render's frames x resolution² by :data:`MAX_RENDER_PIXELS`
(:func:`check_render_budget`), so no option value can ask for unbounded memory.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .errors import CLIError

__all__ = [
    "LIMITS",
    "MAX_RENDER_PIXELS",
    "ArgumentParser",
    "bounded_int",
    "bounded_float",
    "check_render_budget",
    "parse_background",
    "azimuth_list",
    "add_view_options",
]

# (lowest, highest) accepted value of every size option; memory and time grow with them
LIMITS: dict[str, tuple[float, float]] = {
    "resolution": (1, 2048),  # rendered image side, pixels
    "frames": (1, 720),  # turntable frames
    "views": (1, 64),  # --azimuths of a grid
    "ncols": (1, 64),
    "fps": (0.0, 100.0),  # exclusive of 0; GIF frame delays are whole 1/100 s
    "elevation": (-90.0, 90.0),  # degrees
    "azimuth": (-3600.0, 3600.0),  # degrees
    "num_gaussians": (1, 2_000_000),
    "seed": (-(2**63), 2**63 - 1),  # torch.Generator's range
    "steps": (1, 10**9),  # training steps
    "threads": (0, 1024),
}
MAX_RENDER_PIXELS = 2**25  # frames x resolution² of one render call (~1.3 GB of float frames)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's usage errors become one ``dd3g: error: ...`` line (no usage block, exit 2)."""

    def error(self, message: str):
        raise CLIError(f"{message} (see `{self.prog} --help`)")


def _number(v: float) -> str:
    """``v`` for a message; huge powers of two as ``2^k`` / ``2^k-1`` / ``-2^k``."""
    for k in range(32, 65):
        for text, target in ((f"2^{k}", 2**k), (f"2^{k}-1", 2**k - 1), (f"-2^{k}", -(2**k))):
            if v == target:
                return text
    return f"{v:g}" if isinstance(v, float) else str(v)


def bounded_int(name: str, lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in ``LIMITS[name]`` (or ``lo``..``hi``), else a message with the range."""
    lo = int(LIMITS[name][0]) if lo is None else lo
    hi = int(LIMITS[name][1]) if hi is None else hi

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in {_number(lo)}..{_number(hi)}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


def bounded_float(name: str, open_low: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in ``LIMITS[name]`` (``open_low``: the lowest value excluded)."""
    lo, hi = (float(v) for v in LIMITS[name])

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (lo < value <= hi if open_low else lo <= value <= hi):
            low = f"> {lo:g}" if open_low else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"expected a number {low} and <= {hi:g}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


def check_render_budget(images: int, resolution: int, option: str = "--frames") -> None:
    """Refuse rendering ``images`` x ``resolution``² pixels at once above :data:`MAX_RENDER_PIXELS`
    (``option``: the option that sets ``images``, named in the message)."""
    if images * resolution * resolution > MAX_RENDER_PIXELS:
        largest = math.isqrt(MAX_RENDER_PIXELS // max(images, 1))
        raise CLIError(
            f"{option} asks for {images} images of {resolution}x{resolution} = {images * resolution * resolution} "
            f"pixels, more than the limit of {MAX_RENDER_PIXELS}: use --resolution <= {largest} or lower {option}"
        )


def parse_background(text: str) -> tuple[float, float, float]:
    """``white`` | ``black`` | ``R,G,B`` (0..255 integers) -> RGB floats in 0..1."""
    named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
    if text.lower() in named:
        return named[text.lower()]
    try:
        rgb = [int(v) for v in text.split(",")]
    except ValueError:
        rgb = []
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise argparse.ArgumentTypeError(f"background must be white, black or R,G,B with 0..255 values, got {text!r}")
    return tuple(v / 255.0 for v in rgb)


def azimuth_list(text: str) -> list[float]:
    lo, hi = LIMITS["views"]
    parse = bounded_float("azimuth")
    try:
        values = [parse(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not lo <= len(values) <= hi:
        raise argparse.ArgumentTypeError(
            f"expected {lo}..{hi} comma-separated angles in degrees (e.g. 0,90,180,270), got {text!r}"
        )
    return values


def add_view_options(p: argparse.ArgumentParser, resolution: int) -> None:
    p.add_argument("--resolution", type=bounded_int("resolution"), default=resolution, help="square image size, px")
    p.add_argument(
        "--elevation", type=bounded_float("elevation"), default=15.0, help="camera elevation in degrees (> 0: above)"
    )
    p.add_argument("--background", type=parse_background, default="white", help="white, black or R,G,B")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "gsplat", "reference"], help=argparse.SUPPRESS)
