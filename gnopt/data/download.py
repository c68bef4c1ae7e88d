"""Checksum-verified, atomic downloads from a list of mirrors.

The URL opener is injectable (any callable ``url -> file-like context
manager``, like ``urllib.request.urlopen``) so tests never touch the network.
A file is streamed into a temporary file next to its destination while its
SHA-256 is computed (of the *decompressed* content for ``.gz`` names, so the
known hashes of the uncompressed canonical files can be used), and only moved
into place with ``os.replace`` once the hash matches. A failed or mismatching
download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from .atomic import atomic_writer
from .errors import CorruptDatasetError, DownloadError

__all__ = ["Opener", "default_opener", "fetch_verified"]

Opener = Callable[[str], AbstractContextManager[IO[bytes]]]
_CHUNK = 1 << 16
_TIMEOUT_S = 60.0


def default_opener(url: str) -> AbstractContextManager[IO[bytes]]:
    """``urllib.request.urlopen`` with a timeout."""
    return urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # noqa: S310 (https mirrors)


class _ContentHasher:
    """SHA-256 of a byte stream, or of its gunzipped content."""

    def __init__(self, gunzip: bool) -> None:
        self._sha = hashlib.sha256()
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gunzip else None

    def update(self, chunk: bytes) -> None:
        if self._inflate is None:
            self._sha.update(chunk)
        else:
            self._sha.update(self._inflate.decompress(chunk))

    def hexdigest(self) -> str:
        if self._inflate is not None:
            self._sha.update(self._inflate.flush())
            if not self._inflate.eof:
                raise CorruptDatasetError("truncated gzip stream")
        return self._sha.hexdigest()


def _fetch_one(url: str, dest: Path, sha256: str, opener: Opener) -> None:
    """Stream ``url`` into ``dest`` atomically; raise unless the hash matches."""
    hasher = _ContentHasher(gunzip=dest.name.endswith(".gz"))
    with atomic_writer(dest) as out, opener(url) as response:
        while chunk := response.read(_CHUNK):
            hasher.update(chunk)
            out.write(chunk)
        try:
            digest = hasher.hexdigest()
        except zlib.error as exc:
            raise CorruptDatasetError(f"not a valid gzip stream ({exc})") from exc
        if digest != sha256.lower():
            raise CorruptDatasetError(f"sha256 mismatch: got {digest}, expected {sha256}")


def fetch_verified(
    filename: str,
    dest_dir: Path,
    sha256: str,
    mirrors: Sequence[str],
    opener: Opener | None = None,
) -> Path:
    """Download ``filename`` into ``dest_dir`` from the first mirror that
    delivers content with the given SHA-256; return the final path.

    Each mirror is a URL prefix (``mirror + filename`` is fetched). Raises
    :class:`DownloadError` listing every mirror's failure if none succeeds;
    in that case no file (partial or otherwise) is left in ``dest_dir``.
    """
    opener = default_opener if opener is None else opener
    dest = Path(dest_dir) / filename
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror + filename
        try:
            _fetch_one(url, dest, sha256, opener)
        except (OSError, ValueError, EOFError, zlib.error) as exc:
            failures.append(f"  {url}: {type(exc).__name__}: {exc}")
            continue
        return dest
    tried = "\n".join(failures) if failures else "  (no mirrors given)"
    raise DownloadError(
        f"could not download {filename} into {dest_dir}; tried:\n{tried}\n"
        f"Download it by hand and place it in {dest_dir}."
    )
