"""Experiments: configs, the resumable training runner, metrics, checkpoints, and the analyses
of the paper (grid search, update alignment, curvature rank, loss surfaces).

Everything here uses only the public API of :mod:`gnopt` (models, data, curvature,
optimisers); plots live in :mod:`gnopt.plots` and read the files written here.
"""

from .alignment import AlignConfig, run_alignment
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DATASETS, FIRST_ORDER, OPTIMIZERS, SECOND_ORDER, TrainConfig
from .evaluate import evaluate
from .grid import GridConfig, format_grid_table, grid_cells, run_grid, summarize_grid
from .metrics import MetricsWriter, read_metrics
from .rank import RankConfig, run_rank
from .runner import RunResult, build_model, build_optimizer, default_run_dir, load_data, resume, train
from .sampler import BatchSampler
from .surface import SurfaceConfig, run_surface

__all__ = [
    "TrainConfig", "DATASETS", "OPTIMIZERS", "SECOND_ORDER", "FIRST_ORDER",
    "train", "resume", "RunResult", "build_model", "build_optimizer", "load_data", "default_run_dir",
    "MetricsWriter", "read_metrics", "save_checkpoint", "load_checkpoint", "BatchSampler", "evaluate",
    "GridConfig", "grid_cells", "run_grid", "summarize_grid", "format_grid_table",
    "AlignConfig", "run_alignment", "RankConfig", "run_rank", "SurfaceConfig", "run_surface",
]
