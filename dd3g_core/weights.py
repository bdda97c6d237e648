"""Weight-file helpers for every model (teacher U-Net, student): compare state-dict names and shapes,
load strictly, read layout listings, digest weights.

A checkpoint that does not match the architecture must fail loudly and say *what* differs
(the first missing, unexpected and wrongly-shaped keys), not with torch's wall of text.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "state_dict_shapes",
    "diff_shapes",
    "format_diff",
    "check_state_dict",
    "load_unet_state_dict",
    "read_state_dict_listing",
    "load_weights_file",
    "read_weights_file",
    "read_json_config",
    "config_errors",
    "WeightsFileError",
    "state_dict_digest",
]

Shapes = Mapping[str, tuple[int, ...]]


def state_dict_shapes(state_dict: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a state dict (works for meta tensors)."""
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def diff_shapes(
    expected: Shapes, actual: Shapes
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """(missing from ``actual``, unexpected in ``actual``, [(key, expected shape, actual shape)])."""
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    mismatched = [
        (k, tuple(expected[k]), tuple(actual[k]))
        for k in expected
        if k in actual and tuple(expected[k]) != tuple(actual[k])
    ]
    return missing, unexpected, mismatched


def format_diff(missing, unexpected, mismatched, limit: int = 10) -> str:
    """Human-readable summary listing at most ``limit`` keys per category."""
    lines = []
    for title, items in (("missing", missing), ("unexpected", unexpected)):
        if items:
            shown = ", ".join(items[:limit]) + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
            lines.append(f"{len(items)} {title} key(s): {shown}")
    if mismatched:
        shown = "; ".join(f"{k}: expected {list(e)}, got {list(a)}" for k, e, a in mismatched[:limit])
        more = f"; ... (+{len(mismatched) - limit} more)" if len(mismatched) > limit else ""
        lines.append(f"{len(mismatched)} shape mismatch(es): {shown}{more}")
    return "\n".join(lines)


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], limit: int = 10) -> None:
    """Raise ``ValueError`` naming the first differing keys unless names and shapes match exactly."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"expected a mapping of parameter names to tensors, got {type(state_dict).__name__}")
    bad = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"state dict values must be tensors; not tensors: {bad[:limit]}")
    diff = diff_shapes(state_dict_shapes(model.state_dict()), state_dict_shapes(state_dict))
    if any(diff):
        hint = ""
        if any(k.startswith("model.diffusion_model.") for k in state_dict):
            hint = "\n(keys carry the original LDM prefix 'model.diffusion_model.'; strip it first)"
        raise ValueError(f"state dict does not match {type(model).__name__}:\n{format_diff(*diff, limit=limit)}{hint}")


def load_unet_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], assign: bool = False) -> nn.Module:
    """Check names and shapes (``check_state_dict``), then ``load_state_dict(strict=True)``.

    Values are copied into the model's parameters (converted to their dtype/device); with
    ``assign=True`` the tensors replace the parameters instead, which is the way to fill a
    model built on the ``meta`` device without allocating it twice.
    """
    check_state_dict(model, state_dict)
    model.load_state_dict(dict(state_dict), strict=True, assign=assign)
    return model


def read_state_dict_listing(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Parse a ``name<TAB>[d0, d1, ...]`` listing (``#`` lines are comments), keeping file order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            name, shape = line.split("\t")
            shapes[name] = tuple(int(d) for d in ast.literal_eval(shape))
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"{path}:{lineno}: cannot parse {line!r}") from e
    return shapes


class WeightsFileError(ValueError):
    """A weights file cannot be read: missing, truncated, not safetensors, or holding non-float weights."""


def read_weights_file(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file on the CPU; :class:`WeightsFileError` naming the file when
    it is missing, empty, truncated or not a safetensors file at all (safetensors' own errors
    neither name the file nor are ValueErrors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise WeightsFileError(f"weights file {path} is empty (0 bytes): re-export or re-download it")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OverflowError, ValueError, RuntimeError) as e:
        raise WeightsFileError(
            f"weights file {path} is not a readable safetensors file ({' '.join(str(e).split())}): "
            "it is truncated, corrupt or of another format; re-export or re-download it"
        ) from None


def read_json_config(path: str | Path) -> dict:
    """The JSON object in a model folder's config file; :class:`WeightsFileError` naming the file
    when it is missing, not UTF-8 JSON, or not an object."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"config file {path} does not exist")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise WeightsFileError(
            f"config file {path} is not valid JSON ({' '.join(str(e).split())}): re-export or re-download it"
        ) from None
    if not isinstance(d, dict):
        raise WeightsFileError(f"config file {path} must hold a JSON object, got {type(d).__name__}")
    return d


@contextlib.contextmanager
def config_errors(path: str | Path, what: str) -> Iterator[None]:
    """Turn the errors of building ``what`` from the config file ``path`` (a wrong key, type or
    value: ``TypeError``, ``KeyError``, ``ValueError``, a torch ``RuntimeError`` for impossible sizes)
    into one :class:`WeightsFileError` naming the file."""
    try:
        yield
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, KeyError):
            detail = f"missing key {e}"
        raise WeightsFileError(f"config file {path} is not a valid {what} config: {detail}") from None


def load_weights_file(model: nn.Module, path: str | Path, error: type[Exception] = ValueError) -> nn.Module:
    """Fill ``model`` (typically built on the meta device) from a safetensors file, strictly:
    an unreadable file raises :class:`WeightsFileError`; any missing, unexpected or wrongly-shaped
    key, or a non-float tensor where the model has a float one, raises ``error`` listing the first
    differences. Float tensors of another precision are cast to the model's (a float32 file, the
    format every dd3g model is saved in, loads bit for bit)."""
    sd = read_weights_file(path)
    try:
        check_state_dict(model, sd)
    except ValueError as e:
        raise error(f"{path} does not match the model's config: {e}") from None
    own = model.state_dict()
    wrong = [k for k, v in sd.items() if own[k].is_floating_point() and not v.is_floating_point()]
    if wrong:
        raise error(f"{path} does not match the model's config: non-float tensors for float weights {wrong[:10]}")
    sd = {k: v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def state_dict_digest(modules: Sequence[nn.Module]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the modules' state dicts (the weights' identity)."""
    h = hashlib.sha256()
    for i, module in enumerate(modules):
        for name, t in module.state_dict().items():
            h.update(f"{i}/{name}/{t.dtype}/{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
