"""Objective per update and per second for one or more runs (Figure 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..experiments.metrics import read_metrics
from .common import load_matplotlib, save_figure, sliding_mean

__all__ = ["plot_runs", "run_series", "run_label"]

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


def plot_runs(runs: Sequence[PathLike], out: PathLike, metric: str = "loss", window: int = 10,
              labels: Optional[Sequence[str]] = None, title: Optional[str] = None, x: str = "both") -> Path:
    """One figure: ``metric`` against updates and against seconds (``x`` = "both",
    "updates" or "time"), log y axis, trailing sliding mean over ``window`` logged points.

    ``metric``: "loss" (the minibatch objective, as in the paper's Figure 2), or a logged
    evaluation metric such as "train_objective" or "train_sq_error" (``window`` 1 for those
    makes sense as they are sparse). Returns the PNG path.
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
