"""What a retrain would be trained from, fingerprinted cheaply: the nightly schedule's "did anything change?".

The fingerprint covers every input the recipe reads: the RGBA source (the ``rgba_images`` stage version,
which covers the generator's settings, the prompt list's contents and the local model files), the
teacher (the content hash of the folder the ``teacher`` asset would record, or the recipe that makes it),
and the trajectory, distillation and evaluation settings (not the gate's: a stricter gate retrains
nothing). Folder hashes go through ``dd3g_core.io.tree_sha256``'s (path, size, mtime) cache, so a tick
costs a ``stat`` per file.

A ``folder`` RGBA source (the user's own images) is versioned by its settings only (its partitions
check their own inputs, ``dd3g_core.synthesis.folder``), so its images' identity is added as
``rgba_images`` (:func:`dd3g_core.synthesis.folder_fingerprint`: relative paths and contents, through its
own hash cache next to the teacher's): a new, removed or changed image retrains, a touched one does not.
The key is only present for a folder source, so the other sources' fingerprints are unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import stable_hash, tree_sha256

if TYPE_CHECKING:
    from ..profiles import Profile

__all__ = ["source_record", "source_fingerprint"]


def _teacher_identity(profile: Profile, teacher_path: str | None, hash_cache: str | os.PathLike | None) -> dict:
    """The folder the ``teacher`` asset would use (an explicit path wins, as there), by content."""
    spec = profile.teacher
    folder = teacher_path or spec.path
    if folder is None:
        return {"recipe": spec.recipe}
    path = Path(folder).expanduser()
    if not path.is_dir():
        return {"missing": str(path)}  # the run fails at the teacher asset with the full message
    return {"kind": spec.kind, "sha256": tree_sha256(path, hash_cache)["sha256"]}


def _images_identity(profile: Profile, hash_cache: str | os.PathLike | None) -> dict:
    """The images of a folder source, by relative path and content."""
    from ..synthesis.folder import NoImagesError, folder_fingerprint

    # one cache file per set of files: tree_sha256 keeps only the teacher's entries in its own
    cache = Path(hash_cache).with_name("rgba_folder_hashes.json") if hash_cache is not None else None
    try:
        return folder_fingerprint(profile.rgba.folder, cache)
    except NoImagesError as e:
        return {"missing": str(e)}  # the run fails at rgba_images with the same message


def source_record(
    profile: Profile, teacher_path: str | None = None, hash_cache: str | os.PathLike | None = None
) -> dict[str, Any]:
    from ..synthesis.config import stage_version

    distill = profile.distill.replace(teacher=None, trajectories="", out="").identity()
    images = {"rgba_images": _images_identity(profile, hash_cache)} if profile.rgba.generator == "folder" else {}
    return {
        **images,
        "rgba": stage_version(profile.rgba),
        "teacher": _teacher_identity(profile, teacher_path, hash_cache),
        "trajectories": profile.trajectories.to_dict(),
        "distill": distill,
        "steps": profile.distill.steps,
        "evaluation": profile.evaluation.to_dict(),
    }


def source_fingerprint(
    profile: Profile, teacher_path: str | None = None, hash_cache: str | os.PathLike | None = None
) -> str:
    return stable_hash(source_record(profile, teacher_path, hash_cache), length=16)
