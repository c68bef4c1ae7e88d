"""Markdown table of mixture-classifier runs (Figure 3): full-training-set objective / error rate
at chosen updates, how often the minibatch loss jumped, and what the step guard did.

usage: python scripts/mixture_table.py RUN... [--steps 100,500,1000,...] [--l2]
A *jump* is an update after which the next minibatch's loss is over 0.1 and over ten times the
current one (a step that threw away what training had reached). ``--l2``: each cell is the
regularised objective, data loss + (η/2)‖θ‖² (the metrics' ``l2``), with the data loss in
brackets, and the error rate. ``guard_checks`` in a
metrics row: the step guard verified that step (1) or back-tracked it (> 1).
"""

import sys
from pathlib import Path

from gnopt.experiments.metrics import read_metrics


def jumps(rows):
    steps = [r for r in rows if r.get("loss") is not None]
    return sum(1 for a, b in zip(steps, steps[1:]) if b["loss"] > 0.1 and b["loss"] > 10 * a["loss"])


def cell(r, l2: bool) -> str:
    obj = f"{r['train_objective']:.2g}"
    if l2:
        obj = f"{r['train_objective'] + r.get('l2', 0.0):.2g} ({obj})"
    return f"{obj} / {100 * r['train_error_rate']:.2f} %"


def main(runs, steps, l2=False):
    print("| run | " + " | ".join(f"after {s:,}" for s in steps) + " | jumps | guard: checked / back-tracked / rejected | training s |")
    print("|---|" + "---:|" * len(steps) + "---:|---:|---:|")
    for run in runs:
        if not Path(run, "metrics.jsonl").is_file():
            print(f"{run}: no metrics.jsonl, skipped", file=sys.stderr)
            continue
        rows = read_metrics(Path(run, "metrics.jsonl"))
        ev = {r["step"]: r for r in rows if r.get("train_objective") is not None}
        cells = [cell(ev[s], l2) if s in ev else "–" for s in steps]
        g = [r for r in rows if r.get("guard_checks")]
        rej = sum(1 for r in rows if r.get("rejected") and "step guard" in r.get("reason", ""))
        t = max((r.get("time_s", 0) for r in rows), default=0)
        print(f"| {run} | " + " | ".join(cells) + f" | {jumps(rows)} | {len(g)} / "
              f"{sum(r['guard_checks'] > 1 for r in g)} / {rej} | {t:,.0f} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    steps = [100, 200, 500, 1000, 2000, 3000, 5000]
    if "--steps" in args:
        i = args.index("--steps")
        steps = [int(s) for s in args[i + 1].split(",")]
        del args[i:i + 2]
    l2 = "--l2" in args
    args = [a for a in args if a != "--l2"]
    if not args:
        raise SystemExit(__doc__)
    main(args, steps, l2)
