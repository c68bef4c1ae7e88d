"""MNIST loader: ``mnist.npz`` or the four canonical IDX files (raw or .gz).

Search order in the data directory: ``mnist.npz`` (arrays ``x_train``
(60000, 28, 28) uint8, ``y_train``, ``x_test``, ``y_test``), then the IDX
files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` with or without
``.gz``. With ``download=True`` missing IDX files are fetched (``.gz``) from
a list of mirrors, verified against the SHA-256 of the uncompressed canonical
files and cached in the data directory.

Splits follow the paper: "train" is the first 50,000 training images,
"valid" the remaining 10,000, "test" the 10,000 test images.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .download import Opener, fetch_verified
from .errors import CorruptDatasetError, DatasetNotFoundError
from .idx import read_idx
from .paths import PathLike, resolve_data_dir

__all__ = ["load_mnist", "load_mnist_arrays", "MNIST_SHA256", "MNIST_MIRRORS", "N_TRAIN"]

N_TRAIN = 50_000
SIDE = 28
NPZ_NAME = "mnist.npz"
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# SHA-256 of the UNCOMPRESSED canonical files (see shared/data/README.md).
MNIST_SHA256: Mapping[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_SPLITS = ("train", "valid", "test")
_HOW_TO_GET = (
    "pass download=True to fetch the canonical IDX files, or copy mnist.npz "
    "(or the IDX files) into that directory, or set GNOPT_DATA to a directory holding them"
)


def _corrupt(path: Path, reason: str) -> CorruptDatasetError:
    return CorruptDatasetError(
        f"MNIST file {path.name} in {path.parent} is unusable: {reason}. "
        f"Delete it and {_HOW_TO_GET}."
    )


def _check_pair(images: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """Validate an (N, 28, 28) uint8 image array and its (N,) labels 0..9."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise _corrupt(path, f"images must be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise _corrupt(path, f"{images.shape[0]} images but labels of shape {labels.shape}")
    bad_range = labels.size > 0 and not 0 <= labels.min() <= labels.max() <= 9
    if not np.issubdtype(labels.dtype, np.integer) or bad_range:
        raise _corrupt(path, "labels must be integers 0..9")


def _read_npz(path: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x_{part}, y_{part})`` from mnist.npz, validated."""
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f[f"x_{part}"], f[f"y_{part}"]
    except KeyError as exc:
        raise _corrupt(path, f"missing array {exc} (expected x_train, y_train, x_test, y_test)") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _corrupt(path, f"not a readable .npz archive ({exc})") from exc
    _check_pair(images, labels, path)
    return images, labels


def _find_idx(data_dir: Path, name: str) -> Path | None:
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_checked(path: Path) -> np.ndarray:
    try:
        return read_idx(path)
    except CorruptDatasetError as exc:
        raise _corrupt(path, str(exc).removeprefix(f"{path}: ")) from exc


def _read_idx_pair(
    data_dir: Path,
    prefix: str,
    download: bool,
    opener: Opener | None,
    mirrors: Sequence[str],
    checksums: Mapping[str, str],
) -> tuple[np.ndarray, np.ndarray]:
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    paths = {name: _find_idx(data_dir, name) for name in names}
    missing = [name for name, p in paths.items() if p is None]
    if missing and not download:
        wanted = ", ".join(f"{n}[.gz]" for n in missing)
        raise DatasetNotFoundError(
            f"MNIST not found: looked for {NPZ_NAME} and {wanted} in {data_dir}; {_HOW_TO_GET}."
        )
    for name in missing:
        paths[name] = fetch_verified(f"{name}.gz", data_dir, checksums[name], mirrors, opener)
    img_path, lab_path = (paths[n] for n in names)
    assert img_path is not None and lab_path is not None
    images, labels = _read_idx_checked(img_path), _read_idx_checked(lab_path)
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise _corrupt(img_path, f"expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise _corrupt(lab_path, f"{labels.shape} labels for {images.shape[0]} images in {img_path.name}")
    _check_pair(images, labels, lab_path)
    return images, labels


def load_mnist_arrays(
    part: str,
    data_dir: PathLike | None = None,
    download: bool = False,
    opener: Opener | None = None,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    checksums: Mapping[str, str] = MNIST_SHA256,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 images (N, 28, 28) and labels (N,) of ``part`` ("train" =
    all 60,000 training images, or "test")."""
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    root = resolve_data_dir(data_dir)
    npz = root / NPZ_NAME
    if npz.is_file():
        return _read_npz(npz, part)
    prefix = "train" if part == "train" else "t10k"
    return _read_idx_pair(root, prefix, download, opener, mirrors, checksums)


def load_mnist(
    split: str = "train",
    data_dir: PathLike | None = None,
    download: bool = False,
    opener: Opener | None = None,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    checksums: Mapping[str, str] = MNIST_SHA256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` as ``(x, labels)``.

    ``x``: float32 tensor (N, 784) in [0, 1] (pixels / 255, row-major);
    ``labels``: int64 tensor (N,) of digits 0..9. "train" is the first
    50,000 training images, "valid" the rest, "test" the test set.
    ``opener``/``mirrors``/``checksums`` configure ``download=True``
    (``opener`` defaults to ``urllib.request.urlopen``).
    Raises :class:`DatasetNotFoundError` / :class:`CorruptDatasetError`.
    """
    if split not in _SPLITS:
        raise ValueError(f"MNIST split must be one of {_SPLITS}, got {split!r}")
    part = "test" if split == "test" else "train"
    images, labels = load_mnist_arrays(part, data_dir, download, opener, mirrors, checksums)
    if split == "train":
        images, labels = images[:N_TRAIN], labels[:N_TRAIN]
    elif split == "valid":
        images, labels = images[N_TRAIN:], labels[N_TRAIN:]
    x = torch.from_numpy(images.reshape(len(images), SIDE * SIDE).astype(np.float32) / np.float32(255.0))
    return x, torch.from_numpy(labels.astype(np.int64))
