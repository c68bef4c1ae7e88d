"""Data sets of Botev et al. (2017): MNIST, CURVES, FACES and the MNIST
odd/even task, behind one entry point :func:`load_dataset`.

Files are read from (and caches written to) the data directory given by
``data_dir=``, else ``$GNOPT_DATA``, else ``~/.cache/gnopt`` (honouring
``XDG_CACHE_HOME``); see :func:`resolve_data_dir`.
"""

from .curves import generate_curves, load_curves
from .dataset import DATASET_NAMES, Dataset, load_dataset
from .errors import CorruptDatasetError, DatasetNotFoundError, DownloadError
from .faces import build_faces, load_faces, read_olivetti
from .idx import read_idx, write_idx
from .mnist import MNIST_MIRRORS, MNIST_SHA256, load_mnist
from .paths import ENV_VAR, resolve_data_dir

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "load_dataset",
    "load_mnist",
    "load_curves",
    "generate_curves",
    "load_faces",
    "build_faces",
    "read_olivetti",
    "resolve_data_dir",
    "read_idx",
    "write_idx",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "ENV_VAR",
    "DatasetNotFoundError",
    "CorruptDatasetError",
    "DownloadError",
]
