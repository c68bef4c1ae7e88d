"""Figures 5–7: cosine similarity of approximate updates with the block and full GN updates."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from ..experiments.metrics import read_metrics
from .common import load_matplotlib, save_figure

__all__ = ["plot_alignment"]


def plot_alignment(records: "Sequence[Dict[str, Any]] | str | Path", out: Union[str, Path],
                   title: Optional[str] = None) -> Path:
    """One panel per layer (cosine with the block-diagonal GN update, Fig. 5a) and a last panel
    for the whole vector (cosine with the full GN update, Fig. 5b, including block GN itself).
    ``records``: the list from :func:`~gnopt.experiments.alignment.run_alignment` or the path of
    an ``alignment.jsonl``."""
    if isinstance(records, (str, Path)):
        records = read_metrics(records)
    plt = load_matplotlib()
    records = list(records)
    methods = list(records[0]["cos_full"]) if records else []
    n_layers = len(records[0]["cos_layer"][methods[0]]) if methods else 0
    panels = n_layers + 1
    cols = max(1, math.ceil(panels / 2)) if panels > 3 else panels
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    steps = [r["step"] for r in records]
    for lam in range(n_layers):
        ax = flat[lam]
        for m in methods:
            ax.plot(steps, [r["cos_layer"][m][lam] for r in records], marker=".", label=m)
        ax.set_title(f"layer {lam + 1} vs block GN", fontsize=9)
    ax = flat[n_layers]
    for m in methods:
        ax.plot(steps, [r["cos_full"][m] for r in records], marker=".", label=m)
    ax.plot(steps, [r["cos_block_full"] for r in records], marker=".", color="k", ls="--", label="block GN")
    ax.set_title("whole vector vs full GN", fontsize=9)
    ax.legend(fontsize=7)
    for i, ax in enumerate(flat):
        if i > n_layers:
            ax.axis("off")
            continue
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("iteration", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)
