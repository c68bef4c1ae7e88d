"""FACES data set (Hinton & Salakhutdinov 2006; Martens 2010), rebuilt from
the 64x64 Olivetti faces (``olivetti_faces.npz``: ``images`` uint8
(400, 64, 64), ``target`` person ids 0..39, 10 images each).

Each source image is augmented ``n_per_image`` times (414 in the paper) by a
random rotation (uniform in [-90, 90] degrees) and magnification (uniform in
[1.4, 1.8]) about the image centre, then sub-sampled to 25x25. Output pixel
(u, v) looks at offset ``r = ((u, v) + 1/2) * 64/25 - 32`` from the centre
of the magnified, rotated image, i.e. at ``centre + R(-angle) r / scale`` in
the source, read by bilinear interpolation. Each output pixel averages a
``supersample`` x ``supersample`` grid of such reads (a box filter against
aliasing; 1 = plain bilinear). A scale >= 1.4 (~sqrt 2) keeps every rotated
view inside the source image, which is presumably why the range starts
there; the few reads that land outside are clamped to the border.

The training set uses people 0..24 (250 images -> 103,500), the test set
people 30..39 (41,400), as in Martens' ``newfaces_rot_single.mat``. Values
are quantised to multiples of 1/255 (so a uint8 cache is exact).

Normalisation (``normalize``): "standardize" (default) gives every pixel zero
mean and unit variance over the *training* set (test uses the training
statistics). REPRODUCTION.md infers the published set was standardised: the
reported squared errors (~3,900 per image at initialisation) are far too large
for [0, 1] images (~11 per image total variance). "unit" keeps [0, 1].
Building the 103,500 training images takes ~15 s on 2 CPU cores (test set
~6 s more); later loads read the uint8 cache (~1 s).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence

import numpy as np
import torch

from .atomic import try_save_npz_atomic
from .errors import CorruptDatasetError, DatasetNotFoundError
from .paths import PathLike, resolve_data_dir

__all__ = ["build_faces", "load_faces", "read_olivetti", "OLIVETTI_NAME", "OUT_SIDE"]

OLIVETTI_NAME = "olivetti_faces.npz"
SRC_SIDE = 64
OUT_SIDE = 25
N_PER_IMAGE = 414
TRAIN_PEOPLE = range(0, 25)
TEST_PEOPLE = range(30, 40)
ANGLE_RANGE_DEG = (-90.0, 90.0)
SCALE_RANGE = (1.4, 1.8)
NORMALIZATIONS = ("standardize", "unit")
_VERSION = 1  # bump when the construction changes (invalidates caches)
_CHUNK = 1024  # transforms per vectorised block
_HOW_TO_GET = (
    f"copy {OLIVETTI_NAME} (arrays images uint8 (400, 64, 64) and target; e.g. from the "
    "project's shared/data folder, or save scikit-learn's fetch_olivetti_faces() images*255 "
    "and target) into that directory, or set GNOPT_DATA to a directory holding it"
)


def _sample_offsets(supersample: int) -> np.ndarray:
    """Offsets from the image centre, in output-frame source pixels, of all
    sub-samples: shape (625 * k * k, 2) as (x, y), grouped per output pixel."""
    k = supersample
    step = SRC_SIDE / OUT_SIDE
    sub = (np.arange(k) + 0.5) / k  # sub-sample positions inside a pixel
    coords = (np.arange(OUT_SIDE)[:, None] + sub[None, :]).reshape(-1) * step - SRC_SIDE / 2
    # coords is ordered (pixel, sub); build (row, sub_r, col, sub_c) then group.
    ys, xs = np.meshgrid(coords, coords, indexing="ij")  # (25k, 25k)
    grid = np.stack([xs, ys], axis=-1).reshape(OUT_SIDE, k, OUT_SIDE, k, 2)
    return grid.transpose(0, 2, 1, 3, 4).reshape(-1, 2).astype(np.float32)


def _bilinear(flat: np.ndarray, img_idx: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Bilinear reads from ``flat`` ((M * 64 * 64,) float32) of images
    ``img_idx`` (B, 1) at source coordinates ``sx``, ``sy`` (B, P); pixel i's
    centre is at coordinate i, coordinates are clamped to the image."""
    hi = np.float32(SRC_SIDE - 1)
    sx = np.clip(sx, 0.0, hi)
    sy = np.clip(sy, 0.0, hi)
    x0 = np.minimum(sx.astype(np.int32), SRC_SIDE - 2)
    y0 = np.minimum(sy.astype(np.int32), SRC_SIDE - 2)
    fx = sx - x0
    fy = sy - y0
    base = img_idx * (SRC_SIDE * SRC_SIDE) + y0 * SRC_SIDE + x0
    top = flat[base] * (1 - fx) + flat[base + 1] * fx
    bottom = flat[base + SRC_SIDE] * (1 - fx) + flat[base + SRC_SIDE + 1] * fx
    return top * (1 - fy) + bottom * fy


def build_faces(
    images: np.ndarray,
    n_per_image: int = N_PER_IMAGE,
    seed: int | Sequence[int] = 0,
    supersample: int = 2,
) -> np.ndarray:
    """Augment ``images`` (M, 64, 64) (uint8 0..255, or float in [0, 1])
    into a float32 array (M * n_per_image, 625) in [0, 1].

    Rows are image-major: rows ``i * n_per_image ... (i+1) * n_per_image - 1``
    are the variants of image i. Deterministic for a given ``seed``.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (SRC_SIDE, SRC_SIDE):
        raise ValueError(f"images must have shape (M, 64, 64), got {images.shape}")
    if n_per_image < 0 or supersample < 1:
        raise ValueError("n_per_image must be >= 0 and supersample >= 1")
    scale_in = 255.0 if images.dtype == np.uint8 else 1.0
    flat = (images.astype(np.float32) / np.float32(scale_in)).reshape(-1)
    m = images.shape[0]
    rng = np.random.default_rng(seed)
    angle = np.deg2rad(rng.uniform(*ANGLE_RANGE_DEG, size=m * n_per_image))
    scale = rng.uniform(*SCALE_RANGE, size=m * n_per_image)
    cos = (np.cos(angle) / scale).astype(np.float32)[:, None]
    sin = (np.sin(angle) / scale).astype(np.float32)[:, None]
    owner = np.repeat(np.arange(m, dtype=np.intp), n_per_image)[:, None]
    offsets = _sample_offsets(supersample)
    rx, ry = offsets[None, :, 0], offsets[None, :, 1]
    centre = np.float32((SRC_SIDE - 1) / 2)
    k2 = supersample * supersample
    out = np.empty((m * n_per_image, OUT_SIDE * OUT_SIDE), dtype=np.float32)
    for lo in range(0, m * n_per_image, _CHUNK):
        hi = min(m * n_per_image, lo + _CHUNK)
        c, s = cos[lo:hi], sin[lo:hi]
        sx = centre + c * rx + s * ry  # inverse map: rotate by -angle, shrink by 1/scale
        sy = centre - s * rx + c * ry
        vals = _bilinear(flat, owner[lo:hi], sx, sy)
        out[lo:hi] = vals.reshape(hi - lo, OUT_SIDE * OUT_SIDE, k2).mean(axis=2)
    return np.rint(out * 255.0) / np.float32(255.0)


def read_olivetti(data_dir: PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (M, 64, 64), person ids (M,))`` from ``olivetti_faces.npz``.

    A missing ``target`` array defaults to ``i // 10``. Raises
    :class:`DatasetNotFoundError` / :class:`CorruptDatasetError`.
    """
    root = resolve_data_dir(data_dir)
    path = root / OLIVETTI_NAME
    if not path.is_file():
        raise DatasetNotFoundError(f"{OLIVETTI_NAME} not found in {root}; {_HOW_TO_GET}.")

    def corrupt(reason: str) -> CorruptDatasetError:
        return CorruptDatasetError(
            f"{OLIVETTI_NAME} in {root} is unusable: {reason}. Replace it: {_HOW_TO_GET}."
        )

    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f.files:
                raise corrupt(f"no 'images' array (found {f.files})")
            images = f["images"]
            target = f["target"] if "target" in f.files else np.arange(len(images)) // 10
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, CorruptDatasetError):
            raise
        raise corrupt(f"not a readable .npz archive ({exc})") from exc
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SRC_SIDE, SRC_SIDE):
        raise corrupt(f"images must be uint8 (M, 64, 64), got {images.dtype} {images.shape}")
    if target.shape != (images.shape[0],) or not np.issubdtype(target.dtype, np.integer):
        raise corrupt(f"target must be integers of shape ({images.shape[0]},), got {target.shape}")
    return images, target.astype(np.int64)


def _build_split_uint8(
    images: np.ndarray, target: np.ndarray, people: range, n_per_image: int, seed: Sequence[int]
) -> np.ndarray:
    chosen = images[np.isin(target, np.asarray(people))]
    faces = build_faces(chosen, n_per_image=n_per_image, seed=seed)
    return np.rint(faces * 255.0).astype(np.uint8)


def _load_or_build(
    data_dir: PathLike | None, n_per_image: int, seed: int, cache: bool
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (train, test) arrays of shape (N, 625), from cache or built."""
    images, target = read_olivetti(data_dir)
    tag = hashlib.sha256(images.tobytes() + target.tobytes()).hexdigest()[:10]
    path = resolve_data_dir(data_dir) / f"faces_v{_VERSION}_{tag}_seed{seed}_n{n_per_image}.npz"
    counts = [int(np.isin(target, np.asarray(p)).sum()) * n_per_image for p in (TRAIN_PEOPLE, TEST_PEOPLE)]
    if cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                train, test = f["train"], f["test"]
            if [len(train), len(test)] == counts and train.dtype == test.dtype == np.uint8:
                return train, test
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unusable cache: rebuild and overwrite
    train = _build_split_uint8(images, target, TRAIN_PEOPLE, n_per_image, (seed, 0))
    test = _build_split_uint8(images, target, TEST_PEOPLE, n_per_image, (seed, 1))
    if cache:
        try_save_npz_atomic(path, compress=False, train=train, test=test)  # 90 MB; zlib gains little
    return train, test


def load_faces(
    split: str = "train",
    data_dir: PathLike | None = None,
    normalize: str = "standardize",
    n_per_image: int = N_PER_IMAGE,
    seed: int = 0,
    cache: bool = True,
) -> torch.Tensor:
    """FACES ``split`` ("train": people 0-24, "test": people 30-39) as a
    float32 tensor (N, 625), N = people * 10 * ``n_per_image``.

    ``normalize="standardize"`` (default): per-pixel zero mean / unit
    variance using training-set statistics; ``"unit"``: values in [0, 1].
    The augmented set is cached in the data directory (atomic write;
    failure to write only warns).
    """
    if split not in ("train", "test"):
        raise ValueError(f"FACES split must be 'train' or 'test', got {split!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    train, test = _load_or_build(data_dir, n_per_image, seed, cache)
    x = (train if split == "train" else test).astype(np.float32) / np.float32(255.0)
    if normalize == "standardize":
        mean, std = _pixel_stats(train)
        x -= mean
        x /= std
    return torch.from_numpy(x)


def _pixel_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and std (float32, (625,)) of uint8 rows, in [0, 1]
    units, from exact integer sums accumulated in chunks. A constant pixel
    gets std 1 so that standardising never divides by zero."""
    total = np.zeros(train.shape[1], dtype=np.int64)
    total_sq = np.zeros(train.shape[1], dtype=np.int64)
    for lo in range(0, len(train), 8192):
        block = train[lo : lo + 8192].astype(np.int32)
        total += block.sum(axis=0)
        total_sq += (block * block).sum(axis=0)
    n = max(len(train), 1)
    mean = total / (255.0 * n)
    var = np.maximum(total_sq / (255.0**2 * n) - mean**2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
