#!/usr/bin/env python3
"""The README's alignment table (App. F.2, Figures 5–7) from a `gnopt align` run folder.

    .venv/bin/python scripts/align_table.py results/align/mnist-paper-net-b1000

Rows: each method's cosine with the block-diagonal GN update (mean over the layers) and with
the full GN update (whole vector), and block vs full; columns: the measured updates. Also
lists the CG solves that stopped at the iteration cap (the references are then approximate).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> int:
    rows = [json.loads(line) for line in (Path(folder) / "alignment.jsonl").read_text().splitlines() if line]
    if not rows:
        raise SystemExit(f"{folder}/alignment.jsonl has no measurements")
    methods = list(rows[0]["cos_full"])
    print("| update | " + " | ".join(str(r["step"]) for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for m in methods:
        cells = [sum(r["cos_layer"][m]) / len(r["cos_layer"][m]) for r in rows]
        print(f"| {m.upper()} vs block GN (layer mean) | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    for m in methods:
        print(f"| {m.upper()} vs full GN | " + " | ".join(f"{r['cos_full'][m]:.2f}" for r in rows) + " |")
    print("| block GN vs full GN | " + " | ".join(f"{r['cos_block_full']:.2f}" for r in rows) + " |")
    capped = [r["step"] for r in rows if not r["cg_converged_full"]]
    blocks = [(r["step"], i + 1) for r in rows for i, ok in enumerate(r["cg_converged_block"]) if not ok]
    print(f"\nfull-GN CG at its cap at updates {capped or 'none'}; "
          f"unconverged block solves (update, layer): {blocks or 'none'}; "
          f"{rows[-1]['time_s']:.0f} s to the last measurement")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1]))
