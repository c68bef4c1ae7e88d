"""Print a markdown table of the runs under a results folder (reads summary.json/config.json)."""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
print("| data set | run | updates | train time (s) | final train objective | final sq. error / error rate |")
print("|---|---|---:|---:|---:|---:|")
for summ in sorted(root.glob("*/*/summary.json")):
    if "grid" in summ.parts:
        continue
    s = json.loads(summ.read_text())
    last = s.get("last", {})
    err = last.get("train_sq_error", last.get("train_error_rate"))
    obj = last.get("train_objective")
    fmt = lambda v: "–" if v is None else f"{v:.4g}"  # noqa: E731
    print(f"| {summ.parts[-3]} | {summ.parts[-2]} | {s.get('step')} | {s.get('time_s', 0):.0f} | {fmt(obj)} | {fmt(err)} |")
