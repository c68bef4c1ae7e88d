"""The figure of ``gnopt bench step --plot``: where an update's time goes, and how it grows."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from .common import load_matplotlib, save_figure

PHASES = ("forward_backward", "factors", "decompose", "precondition", "gvp", "bookkeeping")


def plot_bench_step(rows: Sequence[Dict[str, Any]], out) -> None:
    """Three panels from the result rows of ``gnopt bench step``:

    1. stacked per-phase seconds per update of every configuration at every batch size
       (the paper's widths), with Adam's update as a bar of its own;
    2. update time / Adam update time against the batch size, one line per configuration;
    3. seconds per update against the widest layer (``--width-sweep``), log-log.
    """
    plt = load_matplotlib()
    ok = [r for r in rows if r.get("status") == "ok" and r.get("update_s")]
    paper = [r for r in ok if not r.get("sweep")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    ax = axes[0]
    labels: List[str] = []
    for i, r in enumerate(paper):
        ph = r.get("phases_per_update") or {}
        bottom = 0.0
        if not ph:  # Adam / HF: the whole update as one bar
            ax.bar(i, r["update_s"], color="0.6")
        for j, p in enumerate(PHASES if ph else ()):
            v = ph.get("t_" + p, 0.0)
            ax.bar(i, v, bottom=bottom, color=f"C{j}", label=p)  # legend de-duplicated below
            bottom += v
        labels.append(f"{r['config']}\nN={r['batch']}")
    handles, names = ax.get_legend_handles_labels()
    seen = {}
    for h, n in zip(handles, names):
        seen.setdefault(n, h)
    ax.legend(seen.values(), seen.keys(), fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("seconds per update")
    ax.set_title("per-phase time (paper's autoencoder)")
    ax = axes[1]
    for cfg in dict.fromkeys(r["config"] for r in paper if r.get("ratio")):
        pts = sorted((r["batch"], r["ratio"]) for r in paper if r["config"] == cfg and r.get("ratio"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=cfg)
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("update time / Adam update time")
    ax.legend(fontsize=7)
    ax = axes[2]
    sweep = [r for r in ok if r.get("sweep")]
    for cfg in dict.fromkeys(r["config"] for r in sweep):
        pts = sorted((max(r["widths"][1:-1]), r["update_s"]) for r in sweep if r["config"] == cfg)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=cfg)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("widest layer w (784-w-w/2-w/4-30-…)")
    ax.set_ylabel("seconds per update")
    ax.set_title("width sweep" if sweep else "width sweep (not run)")
    if sweep:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out)
