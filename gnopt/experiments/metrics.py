"""Metrics as JSON Lines: one object per line, each line written whole and flushed.

The writer opens the file unbuffered and hands every line, newline included, to a single
``write`` system call, so an interrupted run (Ctrl-C, a kill) leaves complete lines only;
:func:`read_metrics` still tolerates a torn last line (e.g. after a power cut) by ignoring it.
Non-finite floats are written as ``null`` (strict JSON has no NaN/Infinity).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

__all__ = ["MetricsWriter", "read_metrics", "truncate_metrics", "jsonable", "write_json_atomic"]

PathLike = Union[str, "os.PathLike[str]"]


def jsonable(v: Any) -> Any:
    """A JSON-safe version of ``v``: tensors/NumPy scalars to Python, non-finite floats to None."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return jsonable(v.tolist())
    if hasattr(v, "item"):
        return jsonable(v.item())
    return str(v)


class MetricsWriter:
    """Append-only JSONL writer. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: PathLike, mode: str = "a") -> None:
        if mode not in ("a", "w"):
            raise ValueError("mode must be 'a' or 'w'")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, mode + "b", buffering=0)

    def write(self, record: Dict[str, Any]) -> None:
        line = json.dumps(jsonable(record), allow_nan=False, separators=(",", ":")) + "\n"
        data = line.encode("utf-8")
        n = self._f.write(data)
        while n is not None and n < len(data):  # a short write: finish the line
            data = data[n:]
            n = self._f.write(data)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """All records of a JSONL file. A torn last line (no newline, unparsable) is ignored with a
    warning; an unparsable line in the middle raises ``ValueError``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    out: List[Dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # the last line had no newline: torn write
                warnings.warn(f"{path}: ignoring an incomplete last line", RuntimeWarning)
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON ({e})") from None
    return out


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty JSON to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(jsonable(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def truncate_metrics(path: PathLike, max_step: int, records: Optional[Iterable[Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """Keep only the records with ``step <= max_step`` (atomically rewritten); return them.

    Used on ``--resume``: lines logged after the last checkpoint are dropped, because the
    resumed run will log those steps again.
    """
    path = Path(path)
    if not path.exists():
        return []
    recs = list(read_metrics(path) if records is None else records)
    keep = [r for r in recs if int(r.get("step", 0)) <= max_step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for r in keep:
            f.write((json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return keep


def optional_plot(name: str, *args, stream=None, **kwargs) -> bool:
    """Call ``gnopt.plots.<name>(*args, **kwargs)``; matplotlib is an optional dependency, so
    without it say so on ``stream`` (if given) and return False instead of failing."""
    try:
        from .. import plots

        getattr(plots, name)(*args, **kwargs)
    except ImportError as e:
        if stream is not None:
            stream.write(f"no plot ({e})\n")
        return False
    return True
