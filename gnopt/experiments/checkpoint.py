"""Atomic checkpoints: ``torch.save`` to a temporary file, fsync, then ``os.replace``.

A reader therefore sees either the previous complete checkpoint or the new complete one,
never a torn file, even if the process dies while saving.

Checkpoints hold Python objects besides tensors (optimiser state, generator states), so
they are loaded with ``weights_only=False``: only load checkpoints you wrote yourself.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Union

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "state_to_device", "CHECKPOINT_NAME", "CHECKPOINT_FORMAT"]

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


def state_to_device(obj: Any, device: "torch.device | str") -> Any:
    """``obj`` with every tensor moved to ``device``: through dicts, lists, tuples, dataclass
    instances (e.g. cached solvers) and plain objects' attributes; other values are kept.
    For an optimiser's state dict loaded on the CPU (:func:`load_checkpoint`) and resumed
    on a GPU; the optimisers keep their generator states on the CPU themselves."""
    device = torch.device(device)
    seen: Dict[int, Any] = {}  # a tensor (or object) referenced twice stays one object

    def move(o: Any) -> Any:
        if id(o) in seen:
            return seen[id(o)]
        if isinstance(o, torch.Tensor):
            out: Any = o.to(device)
        elif isinstance(o, dict):
            out = type(o)((k, move(v)) for k, v in o.items())
        elif isinstance(o, (list, tuple)) and not hasattr(o, "_fields"):
            out = type(o)(move(v) for v in o)
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            out = dataclasses.replace(o, **{f.name: move(getattr(o, f.name)) for f in dataclasses.fields(o)
                                            if f.init})
        elif hasattr(o, "__dict__") and not isinstance(o, type) and any(
                isinstance(v, torch.Tensor) for v in vars(o).values()):
            out = copy.copy(o)
            for k, v in vars(o).items():
                setattr(out, k, move(v))
        else:
            out = o
        seen[id(o)] = out
        return out

    return move(obj)
