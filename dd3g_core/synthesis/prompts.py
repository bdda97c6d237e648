"""Prompt lists: ``assets/prompts/*.txt``, one object prompt per line, ``#`` starts a comment."""

from __future__ import annotations

import os

from .config import prompts_path


class EmptyPromptListError(ValueError):
    """A prompt list has no prompts (only blank lines and comments, or an empty file)."""


def parse_prompts(text: str, source: str = "<text>") -> list[str]:
    prompts = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            prompts.append(" ".join(line.split()))
    if not prompts:
        raise EmptyPromptListError(f"prompt list {source} has no prompts (one per line, '#' starts a comment)")
    return prompts


def load_prompts(prompts_file: str | os.PathLike) -> list[str]:
    """The prompts of ``prompts_file`` (relative names resolve under ``assets/prompts/``)."""
    p = prompts_path(str(prompts_file))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"prompt list {p} is not UTF-8 text ({e})") from None
    return parse_prompts(text, str(p))


def prompt_for_seed(prompts: list[str], seed: int) -> tuple[int, str]:
    """Prompts are used round-robin by sample seed: every prompt gets the same share."""
    if not prompts:
        raise EmptyPromptListError("empty prompt list")
    i = seed % len(prompts)
    return i, prompts[i]
