"""Section 6 / App. D: numerical rank against the bounds rank(H_L)·N and S·N."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

from .common import load_matplotlib, save_figure

__all__ = ["plot_rank"]


def plot_rank(result: Dict[str, Any], out: Union[str, Path]) -> Path:
    """Left: rank of the mini-batch GN vs N with its bound and the number of parameters.
    Right: per-layer ranks of the KFLR (exact E[𝒢]) and KFAC factors against their bounds."""
    plt = load_matplotlib()
    rows = result["rows"]
    N = [r["N"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(N, [r["rank_gn"] for r in rows], "o-", label="rank of mini-batch GN")
    a.plot(N, [r["bound_gn"] for r in rows], "k--", label="min(P, rank(H_L)·N)")
    a.axhline(rows[0]["params"], color="gray", lw=0.8, label=f"P = {rows[0]['params']}")
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("batch size N")
    a.set_ylabel("rank")
    a.legend(fontsize=8)
    a.grid(True, which="both", alpha=0.3)
    layers = len(rows[0]["rank_kflr_G"])
    cmap = plt.get_cmap("viridis")
    for lam in range(layers):
        c = cmap(lam / max(layers - 1, 1))
        b.plot(N, [r["rank_kflr_G"][lam] / r["layer_widths"][lam] for r in rows], "o-", color=c,
               label=f"layer {lam + 1} KFLR" if lam in (0, layers - 1) else None)
        b.plot(N, [r["rank_kfac_G"][lam] / r["layer_widths"][lam] for r in rows], "x:", color=c,
               label=f"layer {lam + 1} KFAC" if lam in (0, layers - 1) else None)
    b.plot(N, [min(1.0, r["bound_kfac_G"][0] / r["layer_widths"][0]) for r in rows], "k--", lw=0.8,
           label="S·N bound, layer 1")
    b.set_xscale("log", base=2)
    b.set_xlabel("batch size N")
    b.set_ylabel("rank / layer width")
    b.set_title("pre-activation factors G per layer", fontsize=9)
    b.legend(fontsize=7)
    b.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Rank of the empirical curvature ({result['config']['dataset']}, loss {result['loss']})")
    fig.tight_layout()
    return save_figure(fig, out)
