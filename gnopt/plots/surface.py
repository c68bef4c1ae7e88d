"""Figure 1: three loss surfaces of a two-layer ReLU net."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

from .common import load_matplotlib, save_figure

__all__ = ["plot_surface"]

_TITLES = {"a": "(a) W1 = sU + tV", "b": "(b) two directions in W2", "c": "(c) W1 = sU, W2 = tV"}


def plot_surface(result: Dict[str, Any], out: Union[str, Path]) -> Path:
    """3-D surfaces of the three grids in ``result`` (from :func:`run_surface`)."""
    plt = load_matplotlib()
    import numpy as np

    s, t = np.asarray(result["s"]), np.asarray(result["t"])
    S, T = np.meshgrid(s, t, indexing="xy")
    fig = plt.figure(figsize=(15, 4.6))
    for i, k in enumerate(("a", "b", "c")):
        ax = fig.add_subplot(1, 3, i + 1, projection="3d")
        Z = np.asarray(result[k])
        ax.plot_surface(S, T, Z, cmap="viridis", linewidth=0, antialiased=True, rcount=80, ccount=80)
        ax.set_title(_TITLES[k], fontsize=10)
        ax.set_xlabel("s")
        ax.set_ylabel("t")
        ax.set_zlabel("E")
    fig.suptitle("Two-layer ReLU net, square loss: no smooth local maxima")
    return save_figure(fig, out)
