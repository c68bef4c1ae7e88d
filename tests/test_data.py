"""Tests for gnopt.data: loaders on small files written here, verified atomic
downloads through a fake URL opener (never the network), data-dir
resolution, and the CURVES / FACES generators."""

from __future__ import annotations

import gzip
import io
import os
import re
import urllib.error
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
import torch

from gnopt.data import (
    CorruptDatasetError,
    DatasetNotFoundError,
    DownloadError,
    build_faces,
    generate_curves,
    load_curves,
    load_dataset,
    load_faces,
    load_mnist,
    read_idx,
    resolve_data_dir,
    write_idx,
)
from gnopt.data import curves as curves_mod
from gnopt.data.atomic import atomic_writer
from gnopt.data.idx import decode_idx, encode_idx

SHARED_DATA = Path("/work/shared/data")
IMG_NAMES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LAB_NAMES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}


# ----------------------------------------------------------------- helpers
def fake_mnist(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (n, 28, 28) whose pixel [0, 0] is i % 256, labels 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    return images, rng.integers(0, 10, size=n).astype(np.uint8)


def write_mnist_idx(root: Path, part: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    suffix = ".gz" if gz else ""
    write_idx(root / (IMG_NAMES[part] + suffix), images)
    write_idx(root / (LAB_NAMES[part] + suffix), labels)


def gz_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class FakeOpener:
    """URL opener serving bytes from a dict; records the URLs asked for.

    A value may be bytes, an exception (raised on open), or ("fail", bytes):
    the stream delivers those bytes, then raises midway.
    """

    def __init__(self, table: dict) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, url: str):
        self.calls.append(url)
        value = self.table.get(url, urllib.error.URLError(f"no route to {url}"))
        if isinstance(value, Exception):
            raise value
        if isinstance(value, tuple):
            return _BrokenStream(value[1])
        return io.BytesIO(value)


class _BrokenStream(io.BytesIO):
    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        chunk = super().read(size)
        if not chunk:
            raise ConnectionResetError("connection reset midway")
        return chunk


def write_olivetti(root: Path, people: list[int], seed: int = 0) -> np.ndarray:
    """A tiny Olivetti-like npz: 10 random 64x64 images per person id."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 243, size=(10 * len(people), 64, 64), dtype=np.uint8)
    target = np.repeat(np.asarray(people, dtype=np.uint8), 10)
    np.savez_compressed(root / "olivetti_faces.npz", images=images, target=target)
    return images


def bernoulli_entropy(x: np.ndarray) -> np.ndarray:
    """sum_p H(x_p) per row, in nats."""
    p = np.clip(x.astype(np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p)).sum(axis=1)


# ------------------------------------------------------- data directory
def test_data_dir_argument_beats_env_beats_default(tmp_path, monkeypatch):
    monkeypatch.setenv("GNOPT_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.setenv("GNOPT_DATA", "")  # empty counts as unset
    assert resolve_data_dir() == tmp_path / "xdg" / "gnopt"
    monkeypatch.delenv("GNOPT_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "gnopt"
    assert not (tmp_path / "home").exists()  # resolving creates nothing


def test_loaders_use_env_data_dir(tmp_path, monkeypatch):
    images, labels = fake_mnist(12)
    write_mnist_idx(tmp_path, "test", images, labels, gz=False)
    monkeypatch.setenv("GNOPT_DATA", str(tmp_path))
    x, y = load_mnist("test")
    assert x.shape == (12, 784) and torch.equal(y, torch.from_numpy(labels.astype(np.int64)))


# ------------------------------------------------------------------ IDX
def test_idx_layout_matches_spec():
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    expected = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 3, 4, 5])
    assert encode_idx(arr) == expected
    np.testing.assert_array_equal(decode_idx(expected), arr)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    arr = np.random.default_rng(1).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = tmp_path / ("a.idx" + (".gz" if gz else ""))
    write_idx(path, arr)
    np.testing.assert_array_equal(read_idx(path), arr)


@pytest.mark.parametrize(
    "data, words",
    [
        (bytes([0, 0, 9, 1, 0, 0, 0, 1, 7]), "magic"),
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]), "magic"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 7]), "(3,)"),
        (b"", "magic"),
    ],
)
def test_idx_rejects_bad_bytes(data, words):
    with pytest.raises(CorruptDatasetError, match=re.escape(words)):
        decode_idx(data, source="x")


# ---------------------------------------------------------------- MNIST
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx(tmp_path, gz):
    images, labels = fake_mnist(20, seed=3)
    timages, tlabels = fake_mnist(7, seed=4)
    write_mnist_idx(tmp_path, "train", images, labels, gz)
    write_mnist_idx(tmp_path, "test", timages, tlabels, gz)
    x, y = load_mnist("train", data_dir=tmp_path)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (20, 784) and y.shape == (20,)
    np.testing.assert_array_equal(x.numpy(), images.reshape(20, 784).astype(np.float32) / 255)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    xt, yt = load_mnist("test", data_dir=tmp_path)
    assert xt.shape == (7, 784)
    np.testing.assert_array_equal(yt.numpy(), tlabels)


def test_mnist_train_is_first_50000(tmp_path):
    images = np.zeros((50_003, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(50_003) % 251
    labels = (np.arange(50_003) % 10).astype(np.uint8)
    write_mnist_idx(tmp_path, "train", images, labels, gz=False)
    x, y = load_mnist("train", data_dir=tmp_path)
    xv, yv = load_mnist("valid", data_dir=tmp_path)
    assert x.shape == (50_000, 784) and xv.shape == (3, 784)
    assert float(x[-1, 0]) == pytest.approx((49_999 % 251) / 255)
    assert yv.tolist() == [0, 1, 2]


def test_mnist_npz(tmp_path):
    xtr, ytr = fake_mnist(15, seed=5)
    xte, yte = fake_mnist(5, seed=6)
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    x, y = load_mnist("train", data_dir=tmp_path)
    np.testing.assert_array_equal(x.numpy() * 255, xtr.reshape(15, 784).astype(np.float32))
    np.testing.assert_array_equal(load_mnist("test", data_dir=tmp_path)[1].numpy(), yte)


def test_mnist_missing_names_file_directory_and_remedy(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("train", data_dir=tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "train-images-idx3-ubyte" in msg and "mnist.npz" in msg
    assert str(tmp_path) in msg and "download=True" in msg


def test_mnist_partial_idx_names_only_the_missing_file(tmp_path):
    images, labels = fake_mnist(4)
    write_idx(tmp_path / IMG_NAMES["train"], images)
    with pytest.raises(DatasetNotFoundError, match="train-labels-idx1-ubyte") as info:
        load_mnist("train", data_dir=tmp_path)
    assert "train-images" not in str(info.value)


def _corrupt_cases(root: Path, case: str) -> str:
    """Write a corrupt MNIST variant; return the file name the error must name."""
    images, labels = fake_mnist(6)
    if case == "magic":
        write_mnist_idx(root, "train", images, labels, gz=False)
        data = bytearray((root / IMG_NAMES["train"]).read_bytes())
        data[2] = 0x0D
        (root / IMG_NAMES["train"]).write_bytes(bytes(data))
        return IMG_NAMES["train"]
    if case == "truncated":
        write_mnist_idx(root, "train", images, labels, gz=False)
        data = (root / IMG_NAMES["train"]).read_bytes()
        (root / IMG_NAMES["train"]).write_bytes(data[:-10])
        return IMG_NAMES["train"]
    if case == "count":
        write_mnist_idx(root, "train", images, labels[:5], gz=False)
        return LAB_NAMES["train"]
    if case == "shape":
        write_idx(root / IMG_NAMES["train"], np.zeros((6, 27, 28), np.uint8))
        write_idx(root / LAB_NAMES["train"], labels)
        return IMG_NAMES["train"]
    if case == "badgz":
        write_mnist_idx(root, "train", images, labels, gz=True)
        (root / (IMG_NAMES["train"] + ".gz")).write_bytes(b"\x1f\x8bnot really gzip")
        return IMG_NAMES["train"] + ".gz"
    if case == "npz_garbage":
        (root / "mnist.npz").write_bytes(b"PK\x03\x04 broken archive")
        return "mnist.npz"
    if case == "npz_keys":
        np.savez(root / "mnist.npz", images=images)
        return "mnist.npz"
    if case == "npz_shape":
        np.savez(root / "mnist.npz", x_train=images.reshape(6, 784), y_train=labels,
                 x_test=images, y_test=labels)
        return "mnist.npz"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["magic", "truncated", "count", "shape", "badgz", "npz_garbage", "npz_keys", "npz_shape"]
)
def test_mnist_corrupt_files(tmp_path, case):
    name = _corrupt_cases(tmp_path, case)
    with pytest.raises(CorruptDatasetError) as info:
        load_mnist("train", data_dir=tmp_path)
    assert isinstance(info.value, ValueError)
    assert name in str(info.value) and str(tmp_path) in str(info.value)


# ------------------------------------------------------- MNIST download
MIRRORS = ("https://mirror-a.test/mnist/", "https://mirror-b.test/mnist/")


def _served(part: str, n: int = 9) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """(url table on mirror b, checksums, images, labels) for a fake MNIST part."""
    images, labels = fake_mnist(n, seed=11)
    raw = {IMG_NAMES[part]: encode_idx(images), LAB_NAMES[part]: encode_idx(labels)}
    table = {MIRRORS[1] + k + ".gz": gz_bytes(v) for k, v in raw.items()}
    return table, {k: sha(v) for k, v in raw.items()}, images, labels


def test_download_verifies_caches_and_falls_back_to_next_mirror(tmp_path):
    table, sums, images, labels = _served("test")
    opener = FakeOpener(table)  # mirror a refuses every request
    x, y = load_mnist("test", data_dir=tmp_path, download=True, opener=opener,
                      mirrors=MIRRORS, checksums=sums)
    np.testing.assert_array_equal(y.numpy(), labels)
    np.testing.assert_array_equal((x.numpy() * 255).round(), images.reshape(len(images), 784))
    assert sorted(os.listdir(tmp_path)) == sorted(n + ".gz" for n in sums)
    assert opener.calls[0].startswith(MIRRORS[0]) and len(opener.calls) == 4
    # Second load: served from the cache, no network.
    offline = FakeOpener({})
    x2, _ = load_mnist("test", data_dir=tmp_path, download=True, opener=offline,
                       mirrors=MIRRORS, checksums=sums)
    assert offline.calls == [] and torch.equal(x, x2)


@pytest.mark.parametrize("failure", ["checksum", "midway", "truncated_gz", "not_gz"])
def test_failed_download_leaves_nothing(tmp_path, failure):
    table, sums, _, _ = _served("test")
    for url, blob in list(table.items()):
        if failure == "checksum":
            table[url] = gz_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05")
        elif failure == "midway":
            table[url] = ("fail", blob[: len(blob) // 2])
        elif failure == "truncated_gz":
            table[url] = blob[: len(blob) // 2]
        else:
            table[url] = b"plain bytes, not gzip"
    table.update({url.replace(MIRRORS[1], MIRRORS[0]): v for url, v in table.items()})
    with pytest.raises(DownloadError) as info:
        load_mnist("test", data_dir=tmp_path, download=True, opener=FakeOpener(table),
                   mirrors=MIRRORS, checksums=sums)
    assert "t10k-" in str(info.value) and MIRRORS[0] in str(info.value) and MIRRORS[1] in str(info.value)
    assert os.listdir(tmp_path) == []  # no partial or temporary file survives
    with pytest.raises(DatasetNotFoundError):  # and nothing was cached
        load_mnist("test", data_dir=tmp_path)


def test_atomic_writer_removes_temp_file_on_error(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as fh:
            fh.write(b"half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path / "sub") == []
    with atomic_writer(target) as fh:
        fh.write(b"whole")
    assert target.read_bytes() == b"whole" and os.listdir(tmp_path / "sub") == ["f.bin"]


def _real_mnist_path() -> Path | None:
    candidates = [Path(os.environ["GNOPT_DATA"])] if os.environ.get("GNOPT_DATA") else []
    candidates.append(SHARED_DATA)
    for root in candidates:
        if (root / "mnist.npz").is_file():
            return root / "mnist.npz"
    return None


REAL_MNIST = _real_mnist_path()
needs_real_mnist = pytest.mark.skipif(
    REAL_MNIST is None,
    reason="real mnist.npz not available (neither $GNOPT_DATA nor /work/shared/data has it)",
)
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_real_mnist
def test_real_mnist_counts():
    root = REAL_MNIST.parent
    x, y = load_mnist("train", data_dir=root)
    xv, yv = load_mnist("valid", data_dir=root)
    xt, yt = load_mnist("test", data_dir=root)
    assert x.shape == (50_000, 784) and xv.shape == (10_000, 784) and xt.shape == (10_000, 784)
    assert (torch.bincount(torch.cat([y, yv]), minlength=10).tolist()) == TRAIN_COUNTS
    assert torch.bincount(yt, minlength=10).tolist() == TEST_COUNTS
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert yt[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert float(xt.mean()) * 255 == pytest.approx(33.791, abs=1e-3)
    d = load_dataset("mnist_oddeven", "test", data_dir=root)
    assert d.y[:10].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]


@needs_real_mnist
def test_download_of_canonical_bytes_passes_published_sha256(tmp_path):
    """Rebuild the canonical t10k IDX files from the real arrays and serve them:
    the default (published) checksums must accept them."""
    with np.load(REAL_MNIST) as f:
        images, labels = f["x_test"], f["y_test"]
    table = {MIRRORS[0] + IMG_NAMES["test"] + ".gz": gz_bytes(encode_idx(images)),
             MIRRORS[0] + LAB_NAMES["test"] + ".gz": gz_bytes(encode_idx(labels))}
    x, y = load_mnist("test", data_dir=tmp_path, download=True, opener=FakeOpener(table), mirrors=MIRRORS)
    assert torch.bincount(y, minlength=10).tolist() == TEST_COUNTS


# --------------------------------------------------------------- CURVES
def test_curves_deterministic_shape_and_range():
    a = generate_curves(300, seed=7)
    assert a.shape == (300, 784) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.max() > 0.9
    np.testing.assert_array_equal(a, generate_curves(300, seed=7))
    np.testing.assert_array_equal(a[:100], generate_curves(100, seed=7))  # prefix-stable
    assert not np.array_equal(a, generate_curves(300, seed=8))
    assert np.all(a.reshape(300, -1).max(axis=1) > 0.5)  # every image has a stroke
    assert np.allclose(a * 255, np.rint(a * 255), atol=1e-3)  # multiples of 1/255


def test_curves_entropy_is_tens_of_nats_like_the_real_set():
    x = generate_curves(2000, seed=0)
    ent = bernoulli_entropy(x)
    assert 45.0 < ent.mean() < 60.0  # real CURVES: ~52-54 nats/image (REPRODUCTION.md)
    assert np.mean((x > 0.05) & (x < 0.95)) > 0.04  # graded ink, not binary strokes


def test_load_curves_caches_atomically(tmp_path, monkeypatch):
    train = load_curves("train", data_dir=tmp_path, seed=3, n_train=50, n_test=20)
    assert train.shape == (50, 784) and train.dtype == torch.float32
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npz") and not files[0].startswith(".")

    def no_generation(*args, **kwargs):
        raise AssertionError("should have used the cache")

    monkeypatch.setattr(curves_mod, "_generate_uint8", no_generation)
    test = load_curves("test", data_dir=tmp_path, seed=3, n_train=50, n_test=20)
    assert test.shape == (20, 784)
    monkeypatch.undo()
    np.testing.assert_array_equal(test.numpy(), generate_curves(70, seed=3)[50:])
    np.testing.assert_array_equal(train.numpy(), generate_curves(70, seed=3)[:50])


def test_cache_into_read_only_dir_only_warns(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.warns(UserWarning, match="could not cache"):
            x = load_curves("train", data_dir=ro, n_train=3, n_test=2)
        assert x.shape == (3, 784) and os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_load_curves_without_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("GNOPT_DATA", str(tmp_path))
    x = load_curves("test", cache=False, n_train=5, n_test=4)
    assert x.shape == (4, 784) and os.listdir(tmp_path) == []


# ---------------------------------------------------------------- FACES
def test_build_faces_deterministic_and_shaped():
    imgs = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
    a = build_faces(imgs, n_per_image=4, seed=1)
    assert a.shape == (12, 625) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, build_faces(imgs, n_per_image=4, seed=1))
    assert not np.array_equal(a, build_faces(imgs, n_per_image=4, seed=2))


def test_build_faces_geometry():
    const = np.full((1, 64, 64), 255, dtype=np.uint8)
    np.testing.assert_allclose(build_faces(const, 3, seed=0), 1.0)
    # A bright disc at the centre stays at the centre of every 25x25 view.
    yy, xx = np.mgrid[:64, :64]
    disc = (((yy - 31.5) ** 2 + (xx - 31.5) ** 2) < 16).astype(np.uint8)[None] * 255
    out = build_faces(disc, 5, seed=0).reshape(5, 25, 25)
    assert np.all(out[:, 12, 12] > 0.9) and np.all(out[:, 0, 0] == 0.0)
    # A bright top half: rotations in [-90, 90] keep row 0 brighter than the bottom row on average.
    top = np.zeros((1, 64, 64), np.uint8)
    top[0, :32] = 255
    views = build_faces(top, 50, seed=0).reshape(50, 25, 25)
    assert views[:, 0, :].mean() > views[:, -1, :].mean() + 0.3


def test_load_faces_tiny_olivetti(tmp_path):
    write_olivetti(tmp_path, people=[0, 1, 30])
    x = load_faces("train", data_dir=tmp_path, n_per_image=2, seed=0)
    assert x.shape == (2 * 10 * 2, 625) and x.dtype == torch.float32
    np.testing.assert_allclose(x.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.double().std(0, unbiased=False).numpy(), 1.0, atol=1e-3)
    unit = load_faces("train", data_dir=tmp_path, n_per_image=2, normalize="unit")
    assert 0.0 <= float(unit.min()) and float(unit.max()) <= 1.0
    mean, std = unit.double().mean(0), unit.double().std(0, unbiased=False)
    np.testing.assert_allclose(((unit - mean) / std).numpy(), x.numpy(), atol=1e-4)
    test = load_faces("test", data_dir=tmp_path, n_per_image=2, normalize="unit")
    assert test.shape == (1 * 10 * 2, 625)
    # Deterministic and cached: the same result from the cache and from scratch.
    again = load_faces("train", data_dir=tmp_path, n_per_image=2, seed=0, cache=False)
    assert torch.equal(x, again)
    assert not torch.equal(x, load_faces("train", data_dir=tmp_path, n_per_image=2, seed=1))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp files


def test_faces_missing_and_corrupt_olivetti(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_faces(data_dir=tmp_path, n_per_image=1)
    assert "olivetti_faces.npz" in str(info.value) and str(tmp_path) in str(info.value)
    assert "copy" in str(info.value)
    np.savez(tmp_path / "olivetti_faces.npz", images=np.zeros((10, 32, 32), np.uint8))
    with pytest.raises(CorruptDatasetError, match="olivetti_faces.npz"):
        load_faces(data_dir=tmp_path, n_per_image=1)
    (tmp_path / "olivetti_faces.npz").write_bytes(b"garbage")
    with pytest.raises(CorruptDatasetError, match="olivetti_faces.npz"):
        load_faces(data_dir=tmp_path, n_per_image=1)
    with pytest.raises(ValueError, match="normalize"):
        load_faces(data_dir=tmp_path, normalize="global")


# ---------------------------------------------------------- load_dataset
def test_load_dataset_all_names(tmp_path):
    images, labels = fake_mnist(10)
    write_mnist_idx(tmp_path, "train", images, labels, gz=True)
    write_olivetti(tmp_path, people=[0])
    mnist = load_dataset("mnist", data_dir=tmp_path)
    assert (mnist.name, mnist.loss, mnist.input_dim, len(mnist)) == ("mnist", "bce", 784, 10)
    assert mnist.y is mnist.x
    odd = load_dataset("mnist_oddeven", data_dir=tmp_path)
    assert odd.loss == "mixture" and odd.y.dtype == torch.float32 and odd.y.shape == (10,)
    np.testing.assert_array_equal(odd.y.numpy(), (labels % 2).astype(np.float32))
    curves = load_dataset("curves", "test", data_dir=tmp_path, n_train=6, n_test=3, seed=1)
    assert (curves.loss, curves.input_dim, len(curves), curves.split) == ("bce", 784, 3, "test")
    faces = load_dataset("faces", data_dir=tmp_path, n_per_image=1)
    assert (faces.loss, faces.input_dim, len(faces)) == ("mse", 625, 10) and faces.y is faces.x
    with pytest.raises(FrozenInstanceError):
        faces.loss = "bce"  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar", data_dir=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "validation", data_dir=tmp_path)
