"""Plots. They read JSONL / JSON results and never train.

* :func:`plot_runs` — objective per update and per second, log scale, sliding window of 10
  (the paper's Figure 2), several runs on one figure.
* :func:`plot_alignment` — cosine similarities per layer and for the whole vector
  (Figures 5–7).
* :func:`plot_rank` — numerical rank of the mini-batch GN and its factors against the
  bounds (section 6, App. D).
* :func:`plot_surface` — the three loss surfaces of Figure 1.
* :func:`plot_grid` — final objective of every grid-search cell as a heat map.
* :func:`plot_bench_step` — ``gnopt bench step --plot``: per-phase times, batch and width scaling.

matplotlib is an optional dependency (``pip install gnopt[plot]``); it is imported lazily
with the non-interactive Agg backend, and a missing matplotlib raises ``ImportError``.
"""

from .alignment import plot_alignment
from .bench import plot_bench_step
from .common import load_matplotlib, sliding_mean
from .grid import plot_grid
from .rank import plot_rank
from .runs import grid_ranking, mean_series, plot_runs, run_series
from .surface import plot_surface

__all__ = ["plot_bench_step", "plot_runs", "run_series", "mean_series", "grid_ranking", "plot_alignment", "plot_rank", "plot_surface", "plot_grid",
           "sliding_mean", "load_matplotlib"]
