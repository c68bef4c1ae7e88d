"""Time-to-target (issue 5): the training seconds a run needs to reach the final full-training-set
error of a reference run (e.g. Adam at its best grid setting after a fixed budget).

usage: python scripts/time_to_target.py RUN REFERENCE_RUN
Reads both runs' metrics.jsonl (rows with ``train_sq_error``/``train_objective``; ``time_s`` is
training time, evaluation excluded) and prints a Markdown table.
"""

import sys
from pathlib import Path

from gnopt.experiments.metrics import read_metrics


def evals(run):
    return [r for r in read_metrics(Path(run, "metrics.jsonl")) if r.get("train_sq_error") is not None]


def first_time(rows, key, target):
    for r in rows:
        if r[key] <= target:
            return r["time_s"], r["step"]
    return None, None


def main(run, ref):
    a, b = evals(run), evals(ref)
    if not a or not b:
        raise SystemExit("both runs need full-training-set evaluations (train_sq_error) in metrics.jsonl")
    budget = b[-1]["time_s"]
    print(f"| metric | reference final (at {budget:.0f} s, {b[-1]['step']} updates) | run reaches it at | "
          f"updates | share of the reference budget | run final ({a[-1]['time_s']:.0f} s, {a[-1]['step']} updates) |")
    print("|---|---:|---:|---:|---:|---:|")
    for key in ("train_sq_error", "train_objective"):
        target = b[-1][key]
        t, s = first_time(a, key, target)
        share = "not reached" if t is None else f"{t / budget:.2f}"
        print(f"| {key} | {target:.3f} | {'—' if t is None else f'{t:.0f} s'} | {s or '—'} | {share} | {a[-1][key]:.3f} |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
