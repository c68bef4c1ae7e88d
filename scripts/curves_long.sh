#!/usr/bin/env bash
# The README's long CURVES comparison and the time-to-target measurement (issues 4 and 5):
# 5,000 updates of default KFRA against Adam at the best rate of the reduced grid (2^-10) for a
# fixed training-time budget, both at once, one torch thread each (so both see the same load).
#   KFRA_STEPS (default 5000), ADAM_BUDGET seconds of Adam training time (default 3000),
#   GNOPT_DATA (CURVES is generated and cached there).
# Writes results/curves-long/{kfra,adam-best}/ and results/curves-long/compare.png; then
# scripts/time_to_target.py prints the time-to-target table.
set -euo pipefail
cd "$(dirname "$0")/.."
KFRA_STEPS=${KFRA_STEPS:-5000}
ADAM_BUDGET=${ADAM_BUDGET:-3000}
GNOPT=${GNOPT:-.venv/bin/gnopt}
OUT=results/curves-long
mkdir -p "$OUT"
$GNOPT train --dataset curves --optimizer kfra --steps "$KFRA_STEPS" --eval-every 100 --threads 1 --quiet \
  --out "$OUT/kfra" > "$OUT/kfra.log" 2>&1 &
$GNOPT train --dataset curves --optimizer adam --lr 0.0009765625 --time-budget "$ADAM_BUDGET" --eval-every 500 \
  --threads 1 --quiet --out "$OUT/adam-best" > "$OUT/adam-best.log" 2>&1 &
wait
$GNOPT plot "$OUT/kfra" "$OUT/adam-best" --metric loss --out "$OUT/compare.png" --title "CURVES: minibatch objective"
.venv/bin/python scripts/time_to_target.py "$OUT/kfra" "$OUT/adam-best" | tee "$OUT/time_to_target.md"
