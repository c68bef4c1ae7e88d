"""The single entry point :func:`load_dataset` and its :class:`Dataset` record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .curves import load_curves
from .faces import load_faces
from .mnist import load_mnist
from .paths import PathLike

__all__ = ["Dataset", "load_dataset", "DATASET_NAMES"]

DATASET_NAMES = ("mnist", "curves", "faces", "mnist_oddeven")
_LOSSES = {"mnist": "bce", "curves": "bce", "faces": "mse", "mnist_oddeven": "mixture"}


@dataclass(frozen=True)
class Dataset:
    """One split of a data set.

    ``x``: float32 (N, input_dim) inputs. ``y``: targets; for the
    autoencoders (mnist, curves, faces) the very same tensor as ``x``; for
    "mnist_oddeven" a float32 (N,) tensor, 1.0 for odd digits and 0.0 for
    even ones. ``loss``: "bce" (Bernoulli cross-entropy on logits), "mse"
    (squared error) or "mixture" (the paper's odd/even mixture classifier).
    """

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    input_dim: int
    loss: str

    def __len__(self) -> int:
        return int(self.x.shape[0])


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: PathLike | None = None,
    download: bool = False,
    **opts: Any,
) -> Dataset:
    """Load ``name`` in {"mnist", "curves", "faces", "mnist_oddeven"}.

    ``split``: "train" or "test" (MNIST also "valid": training images
    50,000-59,999). ``download`` only matters for MNIST (CURVES is generated,
    FACES is built from ``olivetti_faces.npz``). ``opts`` go to the loader:
    MNIST ``opener``, ``mirrors``, ``checksums``; CURVES ``seed``, ``cache``,
    ``n_train``, ``n_test``; FACES ``normalize``, ``n_per_image``, ``seed``,
    ``cache``.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASET_NAMES}")
    if name in ("mnist", "mnist_oddeven"):
        x, labels = load_mnist(split, data_dir=data_dir, download=download, **opts)
        y = x if name == "mnist" else (labels % 2).to(torch.float32)
    elif name == "curves":
        x = y = load_curves(split, data_dir=data_dir, **opts)
    else:
        x = y = load_faces(split, data_dir=data_dir, **opts)
    return Dataset(name=name, split=split, x=x, y=y, input_dim=int(x.shape[1]), loss=_LOSSES[name])
