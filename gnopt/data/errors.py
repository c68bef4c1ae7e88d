"""Exception classes raised by the dataset loaders.

Every message names the file, the directory it was looked for in, and how to
obtain a good copy, so that a failed run says what to do next.
"""

from __future__ import annotations

__all__ = ["DatasetNotFoundError", "CorruptDatasetError", "DownloadError"]


class DatasetNotFoundError(FileNotFoundError):
    """A required data file is absent from the data directory."""


class CorruptDatasetError(ValueError):
    """A data file exists but cannot be used (bad magic number, wrong sizes,
    unreadable archive or checksum mismatch)."""


class DownloadError(OSError):
    """Every mirror failed to deliver a file with the expected checksum."""
