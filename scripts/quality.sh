#!/usr/bin/env bash
# Per-update quality of optimiser configurations on CURVES (the paper's net, batch 1000): the
# full-training-set objective and squared error per image at every 100 updates (issue 5: speed
# options against the loss after a fixed number of updates; issue 4: seeds, KFRA vs KFAC).
# The comparison is per update, so the machine's load does not change the numbers.
#   RUNS: ';'-separated "name|gnopt train options" (default: KFRA with factors every 1, 5
#         and 10 updates; the α product on the full batch or a quarter of it)
#   STEPS (default 500), SEEDS (default "0"), JOBS runs at a time (default 2, one thread each),
#   OUT (default bench-results/quality), GNOPT_DATA (CURVES is generated and cached there).
# Runs whose folder exists are skipped. Writes $OUT/<name>-s<seed>/ and prints a Markdown
# table of every run found in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-500}
SEEDS=${SEEDS:-0}
JOBS=${JOBS:-2}
OUT=${OUT:-bench-results/quality}
GNOPT=${GNOPT:-.venv/bin/gnopt}
RUNS=${RUNS:-"p1-full|--optimizer kfra --factor-period 1 --step-size-fraction 1.0;p5-quarter|--optimizer kfra --factor-period 5 --step-size-fraction 0.25;p10-quarter|--optimizer kfra --factor-period 10 --step-size-fraction 0.25"}
mkdir -p "$OUT"
IFS=';' read -ra SPECS <<< "$RUNS"
for seed in $SEEDS; do
  for spec in "${SPECS[@]}"; do
    name=${spec%%|*}
    args=${spec#*|}
    if [ -e "$OUT/$name-s$seed/metrics.jsonl" ]; then  # done or started earlier (gnopt train --resume continues)
      echo "skipping $OUT/$name-s$seed: it exists" >&2
      continue
    fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done  # a failed run (e.g. its folder exists) is reported in its log
    # shellcheck disable=SC2086
    $GNOPT train --dataset curves $args --steps "$STEPS" --seed "$seed" --eval-every 100 --threads 1 --quiet \
      --no-plot --out "$OUT/$name-s$seed" > "$OUT/$name-s$seed.log" 2>&1 &
  done
done
wait || true
.venv/bin/python - "$OUT" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "scripts")
from time_to_target import evals
rows = {}
for run in sorted(Path(sys.argv[1]).iterdir()):
    if not (run / "metrics.jsonl").exists() or "-s" not in run.name:
        continue
    rows[run.name] = {r["step"]: (r["train_objective"], r["train_sq_error"]) for r in evals(run)}
steps = sorted({s for r in rows.values() for s in r})
print("| run | " + " | ".join(f"objective / sq. error @{s}" for s in steps) + " |")
print("|---|" + "---:|" * len(steps))
for name, r in rows.items():
    print(f"| {name} | " + " | ".join(f"{r[s][0]:.2f} / {r[s][1]:.3f}" if s in r else "–" for s in steps) + " |")
PY
