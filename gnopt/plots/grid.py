"""Heat map of a first-order grid search (final objective per cell)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Sequence, Union

from .common import load_matplotlib, save_figure

__all__ = ["plot_grid"]


def plot_grid(grid: Any, rows: Sequence[Dict[str, Any]], out: Union[str, Path]) -> Path:
    """One heat map per method: learning rate × decay fraction, colour = log10 objective."""
    plt = load_matplotlib()
    import numpy as np

    methods = list(grid.methods)
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4.5), squeeze=False)
    by = {(r["method"], r["lr_exponent"], r["decay_fraction"]): r for r in rows}
    for ax, m in zip(axes[0], methods):
        Z = np.full((len(grid.lr_exponents), len(grid.decay_fractions)), np.nan)
        for i, e in enumerate(grid.lr_exponents):
            for j, f in enumerate(grid.decay_fractions):
                v = by[(m, e, f)]["objective"]
                if v is not None and math.isfinite(v) and v > 0:
                    Z[i, j] = math.log10(v)
        im = ax.imshow(Z, aspect="auto", cmap="viridis_r")
        ax.set_xticks(range(len(grid.decay_fractions)), [f"{100 * f:g}%" for f in grid.decay_fractions])
        ax.set_yticks(range(len(grid.lr_exponents)), [f"2^-{e:g}" for e in grid.lr_exponents])
        ax.set_xlabel("decay period (% of updates)")
        ax.set_ylabel("learning rate")
        for i, e in enumerate(grid.lr_exponents):
            for j, f in enumerate(grid.decay_fractions):
                r = by[(m, e, f)]
                if r["best"]:
                    ax.text(j, i, "*", ha="center", va="center", color="red", fontsize=16)
        ax.set_title(f"{m}: log10 final objective")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return save_figure(fig, out)
