"""Atomic file writes: write to a temporary file in the target directory,
then ``os.replace`` it into place, so no partial file can ever be observed."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["atomic_writer", "save_npz_atomic", "try_save_npz_atomic"]


@contextmanager
def atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file handle whose content replaces ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    The parent directory is created if needed; one without any write
    permission bit is refused (``PermissionError``) even for root.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.parent.stat().st_mode & 0o222:
        # Honour a directory marked read-only even when running as root,
        # e.g. a shared data folder given as GNOPT_DATA.
        raise PermissionError(f"{path.parent} is marked read-only (no write permission bits)")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def save_npz_atomic(path: Path, compress: bool = True, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as an ``.npz`` archive, atomically."""
    with atomic_writer(path) as fh:
        (np.savez_compressed if compress else np.savez)(fh, **arrays)


def try_save_npz_atomic(path: Path, compress: bool = True, **arrays: np.ndarray) -> bool:
    """Like :func:`save_npz_atomic` but a failure (read-only directory, full
    disk) only warns: caching is an optimisation. Returns True on success."""
    try:
        save_npz_atomic(path, compress=compress, **arrays)
    except OSError as exc:
        warnings.warn(f"could not cache {path.name} in {path.parent}: {exc}", stacklevel=3)
        return False
    return True
