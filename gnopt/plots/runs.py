"""Objective per update and per second for one or more runs (Figure 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..experiments.metrics import read_metrics
from .common import load_matplotlib, save_figure, sliding_mean

__all__ = ["plot_runs", "run_series", "run_label", "mean_series", "grid_ranking"]

PathLike = Union[str, Path]


def _metrics_path(run: PathLike) -> Path:
    p = Path(run)
    return p / "metrics.jsonl" if p.is_dir() else p


def run_label(run: PathLike) -> str:
    """"<optimizer>" (+ " ema" with curvature momentum, + "*" for factored damping) or the folder name."""
    p = Path(run)
    cfg_path = (p if p.is_dir() else p.parent) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return p.name
    name = cfg.get("optimizer", p.name)
    if name in ("kfra", "kflr", "kfac", "block"):
        if cfg.get("damping") == "factored" and name != "block":
            name += "*"
        if cfg.get("curvature_ema"):
            name += f" ema{cfg['curvature_ema']:g}"
    elif name in ("adam", "sgd", "momentum", "nesterov"):
        name += f" lr={cfg.get('lr'):g}"
        if cfg.get("decay_period"):
            name += f" T={cfg['decay_period']}"
    return f"{name} ({p.name if p.is_dir() else p.parent.name})"


def run_series(run: PathLike, metric: str = "loss") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, seconds, values)`` of ``metric`` from a run folder or a metrics file, only
    the records that have it (``train_*`` metrics exist on evaluation steps only)."""
    recs = read_metrics(_metrics_path(run))
    rows = [(r["step"], r.get("time_s", np.nan), r.get(metric)) for r in recs if metric in r]
    if not rows:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    a = np.array([[s, t, np.nan if v is None else v] for s, t, v in rows], dtype=np.float64)
    return a[:, 0], a[:, 1], a[:, 2]


def mean_series(runs: Sequence[PathLike], metric: str = "loss", window: int = 10
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean over ``runs`` of their smoothed ``metric`` (and of their times), point by point,
    over the common length — the paper's "average performance of the top 10/20 settings"."""
    series = [run_series(r, metric) for r in runs]
    series = [s for s in series if s[2].size]
    if not series:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    n = min(s[2].size for s in series)
    steps = series[0][0][:n]
    secs = np.mean([s[1][:n] for s in series], axis=0)
    vals = np.mean([sliding_mean(s[2], window)[:n] for s in series], axis=0)
    return steps, secs, vals


def plot_runs(runs: Sequence[PathLike], out: PathLike, metric: str = "loss", window: int = 10,
              labels: Optional[Sequence[str]] = None, title: Optional[str] = None, x: str = "both",
              groups: Optional[Sequence[Tuple[str, Sequence[PathLike]]]] = None) -> Path:
    """One figure: ``metric`` against updates and against seconds (``x`` = "both",
    "updates" or "time"), log y axis, trailing sliding mean over ``window`` logged points.

    ``metric``: "loss" (the minibatch objective, as in the paper's Figure 2), or a logged
    evaluation metric such as "train_objective" or "train_sq_error" (``window`` 1 for those
    makes sense as they are sparse). ``groups``: ``(label, runs)`` pairs drawn as the mean
    curve of their runs (dashed), e.g. the top 10 cells of a grid search. Returns the PNG path.
    """
    plt = load_matplotlib()
    panels = {"both": ["time", "updates"], "updates": ["updates"], "time": ["time"]}[x]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.2), squeeze=False)
    labels = list(labels) if labels is not None else [run_label(r) for r in runs]
    any_data = False
    for run, label in zip(runs, labels):
        steps, secs, vals = run_series(run, metric)
        if vals.size == 0:
            continue
        any_data = True
        sm = sliding_mean(vals, window)
        for ax, kind in zip(axes[0], panels):
            ax.plot(secs if kind == "time" else steps, sm, label=label, lw=1.3)
    for label, members in groups or ():
        steps, secs, sm = mean_series(members, metric, window)
        if sm.size == 0:
            continue
        any_data = True
        for ax, kind in zip(axes[0], panels):
            ax.plot(secs if kind == "time" else steps, sm, label=label, lw=1.3, ls="--")
    for ax, kind in zip(axes[0], panels):
        ax.set_xlabel("training time (s)" if kind == "time" else "updates")
        ax.set_ylabel(metric + (f" (sliding mean of {window})" if window > 1 else ""))
        if any_data:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no '{metric}' values", ha="center", va="center", transform=ax.transAxes)
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def grid_ranking(grid_dir: PathLike) -> list:
    """The run folders of a grid search (``grid.json`` from ``gnopt grid``), best first;
    cells without a finite final objective are left out."""
    grid_dir = Path(grid_dir)
    rows = json.loads((grid_dir / "grid.json").read_text())
    ok = [r for r in rows if r.get("objective") is not None and np.isfinite(r["objective"])]
    ok.sort(key=lambda r: r["objective"])
    return [grid_dir / r["name"] for r in ok]
