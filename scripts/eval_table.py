"""Markdown table of a run's full-training-set evaluations at chosen updates (README tables).

usage: python scripts/eval_table.py RUN [STEPS...]   (default steps 100 200 300 500 1000 2000 3000 4000 5000)
Reads RUN/metrics.jsonl: ``time_s`` (training seconds), ``train_sq_error``, ``train_objective``.
"""

import sys

from time_to_target import evals  # scripts/ is on sys.path when this file is run


def main(run, steps):
    ev = {r["step"]: r for r in evals(run)}
    have = [s for s in steps if s in ev]
    print("| updates | " + " | ".join(f"{s:,}" for s in have) + " |")
    print("|---|" + "---:|" * len(have))
    print("| training seconds | " + " | ".join(f"{ev[s]['time_s']:,.0f}" for s in have) + " |")
    print("| sq. error per image | " + " | ".join(f"{ev[s]['train_sq_error']:.3g}" for s in have) + " |")
    print("| training objective | " + " | ".join(f"{ev[s]['train_objective']:.4g}" for s in have) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1], [int(s) for s in sys.argv[2:]] or [100, 200, 300, 500, 1000, 2000, 3000, 4000, 5000])
