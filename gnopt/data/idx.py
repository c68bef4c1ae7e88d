"""Reading and writing the IDX format used by the canonical MNIST files.

Layout: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions d, then d big-endian uint32 sizes, then the data in C order.
Files ending in ``.gz`` are transparently (de)compressed.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .errors import CorruptDatasetError

__all__ = ["encode_idx", "decode_idx", "read_idx", "write_idx"]

_UBYTE = 0x08


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array of any shape (1 to 255 dimensions)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"only uint8 arrays are supported, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1..255 dimensions, got {array.ndim}")
    header = bytes([0, 0, _UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def decode_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a uint8 array; ``source`` names the file in errors.

    Raises :class:`CorruptDatasetError` on a bad magic number or when the
    data length does not match the sizes in the header.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE or data[3] == 0:
        raise CorruptDatasetError(
            f"{source}: bad IDX magic number {data[:4].hex() or '(empty)'} "
            "(expected 000008 followed by the number of dimensions)"
        )
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise CorruptDatasetError(f"{source}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header_len != expected:
        raise CorruptDatasetError(
            f"{source}: IDX header announces shape {shape} ({expected} bytes) "
            f"but the file holds {len(data) - header_len} data bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (raw, or gzip-compressed when the name ends in .gz)."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CorruptDatasetError(f"{path}: not a valid gzip file ({exc})") from exc
    return decode_idx(data, source=str(path))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as IDX; gzip-compressed if the name ends in .gz."""
    path = Path(path)
    data = encode_idx(array)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
