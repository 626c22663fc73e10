"""Atomic learner checkpoints: ``torch.save`` of tensors and plain values, never pickled objects.

Write order: serialise to ``<path>.tmp`` → fsync the file → ``os.replace`` onto ``<path>`` →
fsync the directory. A crash at any point leaves either the previous checkpoint or the new one.
Loading uses ``torch.load(weights_only=True)``, which refuses anything but tensors and primitives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from streamrl.errors import CheckpointError

FORMAT = 1
FILENAME = "learner.pt"


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically to ``directory/learner.pt``; returns the path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path, tmp = d / FILENAME, d / (FILENAME + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e}") from e
    return path


def load_checkpoint(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The last checkpoint in ``directory``, or None when there is none."""
    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {state.get('format')!r}")
    return state
