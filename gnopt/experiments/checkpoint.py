"""Atomic checkpoints: ``torch.save`` to a temporary file, fsync, then ``os.replace``.

A reader therefore sees either the previous complete checkpoint or the new complete one,
never a torn file, even if the process dies while saving.

Checkpoints hold Python objects besides tensors (optimiser state, generator states), so
they are loaded with ``weights_only=False``: only load checkpoints you wrote yourself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Union

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_NAME", "CHECKPOINT_FORMAT"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1

PathLike = Union[str, "os.PathLike[str]"]


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """Write ``state`` (plus a format tag) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a gnopt checkpoint (format {CHECKPOINT_FORMAT})")
    return state
