"""Print a markdown table of the runs under a results folder (reads summary.json, metrics.jsonl).

Columns: updates and training seconds of the run; the final full-training-set objective and
squared error per image (error rate for the classifier); and the mean minibatch objective
over updates AT−9..AT (AT = the second-order runs' length), i.e. a per-update comparison.
"""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
at = int(sys.argv[2]) if len(sys.argv) > 2 else 60


def window_loss(metrics: Path, upto: int):
    vals = []
    with open(metrics) as f:
        for line in f:
            d = json.loads(line)
            if upto - 10 < d.get("step", 0) <= upto and d.get("loss") is not None:
                vals.append(d["loss"])
    return sum(vals) / len(vals) if len(vals) == 10 else None


def fmt(v):
    return "–" if v is None else f"{v:.4g}"


print(f"| data set | run | updates | train time (s) | final train objective | final sq. error / error rate "
      f"| minibatch objective, updates {at - 9}–{at} |")
print("|---|---|---:|---:|---:|---:|---:|")
for summ in sorted(root.glob("*/*/summary.json")):
    if "grid" in summ.parts:
        continue
    s = json.loads(summ.read_text())
    last = s.get("last", {})
    err = last.get("train_sq_error", last.get("train_error_rate"))
    w = window_loss(summ.parent / "metrics.jsonl", at)
    print(f"| {summ.parts[-3]} | {summ.parts[-2]} | {s.get('step')} | {s.get('time_s', 0):.0f} "
          f"| {fmt(last.get('train_objective'))} | {fmt(err)} | {fmt(w)} |")
