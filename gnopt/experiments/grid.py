"""The first-order grid search of the paper's footnote 10.

Learning rates 2⁻⁶ … 2⁻¹³ (every power of two) × decay periods of 100 %, 50 %, 25 %, 12.5 %
and 6.25 % of the number of updates (the learning rate is halved every decay period), for
each first-order method. (That is 8 × 5 = 40 cells per method; the paper's text speaks of
35 experiments, which suggests one of the two lists was shorter; we keep both as stated.)

Every cell is an ordinary training run in ``<out>/<cell name>/``; a finished cell is
skipped and a partly run one resumed, so the search can be stopped and restarted at will.
The summary is the final full-training-set objective of every cell (``grid.json``,
``grid.txt``, ``grid.png``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple, Union

from .config import FIRST_ORDER, TrainConfig
from .metrics import optional_plot, read_metrics, write_json_atomic
from .runner import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, resume, run_is_finished, train

__all__ = ["GridConfig", "grid_cells", "run_grid", "summarize_grid", "format_grid_table", "PAPER_LR_EXPONENTS",
           "PAPER_DECAY_FRACTIONS", "cell_name"]

PAPER_LR_EXPONENTS = (6, 7, 8, 9, 10, 11, 12, 13)
PAPER_DECAY_FRACTIONS = (1.0, 0.5, 0.25, 0.125, 0.0625)

PathLike = Union[str, Path]


@dataclass(frozen=True)
class GridConfig:
    """``base``: the run configuration shared by all cells (its optimizer, lr and
    decay_period are replaced per cell; ``base.steps`` must be set). ``methods`` ⊆
    {adam, sgd, momentum, nesterov}; learning rate 2^-e for e in ``lr_exponents``; decay
    period ``round(f · steps)`` for f in ``decay_fractions`` (1.0 = halve once, at the end)."""

    base: TrainConfig
    methods: Tuple[str, ...] = ("adam",)
    lr_exponents: Tuple[float, ...] = PAPER_LR_EXPONENTS
    decay_fractions: Tuple[float, ...] = PAPER_DECAY_FRACTIONS

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in FIRST_ORDER]
        if bad:
            raise ValueError(f"the grid search is for first-order methods {FIRST_ORDER}; got {bad}")
        if self.base.steps is None or self.base.steps < 1:
            raise ValueError("the grid's base configuration needs steps >= 1")
        if not self.methods or not self.lr_exponents or not self.decay_fractions:
            raise ValueError("empty grid")
        if any(not 0 < f <= 1 for f in self.decay_fractions):
            raise ValueError("decay fractions must be in (0, 1]")


def cell_name(method: str, exponent: float, fraction: float) -> str:
    return f"{method}-lr2^-{exponent:g}-decay{100 * fraction:g}pct"


def grid_cells(grid: GridConfig) -> List[Dict[str, Any]]:
    """``[{"name", "method", "lr_exponent", "lr", "decay_fraction", "decay_period", "config"}]``."""
    out = []
    steps = int(grid.base.steps)  # type: ignore[arg-type]
    for m in grid.methods:
        for e in grid.lr_exponents:
            for f in grid.decay_fractions:
                period = max(1, int(round(f * steps)))
                cfg = dataclasses.replace(grid.base, optimizer=m, lr=2.0 ** (-e), decay_period=period)
                out.append({"name": cell_name(m, e, f), "method": m, "lr_exponent": e, "lr": 2.0 ** (-e),
                            "decay_fraction": f, "decay_period": period, "config": cfg})
    return out


def _final_objective(run_dir: Path) -> Tuple[Optional[float], Optional[int]]:
    """(final train objective (or mean of the last 10 minibatch losses), last step)."""
    p = run_dir / METRICS_NAME
    if not p.exists():
        return None, None
    recs = read_metrics(p)
    if not recs:
        return None, None
    last = recs[-1]
    if "train_objective" in last:
        v = last["train_objective"]
        return (math.inf if v is None else float(v)), int(last["step"])
    losses = [r.get("loss") for r in recs[-10:]]
    vals = [math.inf if v is None else float(v) for v in losses]
    return (sum(vals) / len(vals) if vals else None), int(last["step"])


def summarize_grid(grid: GridConfig, out_dir: PathLike) -> List[Dict[str, Any]]:
    """One row per cell: name, method, lr_exponent, decay_fraction, final objective, status, best."""
    out_dir = Path(out_dir)
    rows = []
    for c in grid_cells(grid):
        d = out_dir / c["name"]
        obj, step = _final_objective(d)
        status = "done" if run_is_finished(d) else ("partial" if step else "missing")
        rows.append({k: c[k] for k in ("name", "method", "lr_exponent", "lr", "decay_fraction", "decay_period")}
                    | {"objective": obj, "step": step, "status": status, "best": False})
    for m in grid.methods:
        cand = [r for r in rows if r["method"] == m and r["objective"] is not None and math.isfinite(r["objective"])]
        if cand:
            min(cand, key=lambda r: r["objective"])["best"] = True
    return rows


def format_grid_table(grid: GridConfig, rows: Sequence[Dict[str, Any]]) -> str:
    """A text table per method: rows = learning rates, columns = decay fractions; ``*`` = best."""
    lines = []
    by = {(r["method"], r["lr_exponent"], r["decay_fraction"]): r for r in rows}
    for m in grid.methods:
        lines.append(f"{m}: final training objective (rows: learning rate, columns: decay period as % of "
                     f"{grid.base.steps} updates; * best, ~ unfinished)")
        head = "lr".ljust(10) + "".join(f"{100 * f:g}%".rjust(13) for f in grid.decay_fractions)
        lines.append(head)
        for e in grid.lr_exponents:
            cells = []
            for f in grid.decay_fractions:
                r = by[(m, e, f)]
                v = r["objective"]
                s = "-" if v is None else ("diverged" if not math.isfinite(v) else f"{v:.5g}")
                s += "*" if r["best"] else ("~" if r["status"] == "partial" else " ")
                cells.append(s.rjust(13))
            lines.append(f"2^-{e:g}".ljust(10) + "".join(cells))
        lines.append("")
    return "\n".join(lines)


def run_grid(grid: GridConfig, out_dir: PathLike, *, progress: bool = True, stream: Optional[TextIO] = None,
             plot: bool = True, handle_sigint: bool = False) -> List[Dict[str, Any]]:
    """Run every unfinished cell, then write and return the summary rows.

    A ``KeyboardInterrupt`` (Ctrl-C) stops the search after saving the current cell's
    checkpoint; the summary is written for the cells done so far and the interrupt re-raised.
    """
    stream = sys.stderr if stream is None else stream
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "grid_config.json", {
        "base": grid.base.to_dict(), "methods": list(grid.methods), "lr_exponents": list(grid.lr_exponents),
        "decay_fractions": list(grid.decay_fractions)})
    cells = grid_cells(grid)
    interrupted = False
    for i, c in enumerate(cells):
        d = out_dir / c["name"]
        if run_is_finished(d):
            continue
        stream.write(f"[{i + 1}/{len(cells)}] {c['name']}\n")
        stream.flush()
        if (d / CONFIG_NAME).exists() and ((d / CHECKPOINT_NAME).exists() or (d / METRICS_NAME).exists()):
            res = resume(d, progress=progress, stream=stream, plot=False, handle_sigint=handle_sigint)
        else:
            res = train(c["config"], d, progress=progress, stream=stream, plot=False, handle_sigint=handle_sigint)
        if res.interrupted:
            interrupted = True
            break
    rows = summarize_grid(grid, out_dir)
    write_json_atomic(out_dir / "grid.json", rows)
    table = format_grid_table(grid, rows)
    (out_dir / "grid.txt").write_text(table + "\n")
    if plot:
        optional_plot("plot_grid", grid, rows, out_dir / "grid.png", stream=stream)
    if interrupted:
        raise KeyboardInterrupt
    return rows
