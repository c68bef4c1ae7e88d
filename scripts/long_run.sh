#!/usr/bin/env bash
# The README's long comparisons and time-to-target measurements (issues 4 and 5):
# default KFRA for KFRA_STEPS updates against Adam at the best rate of the reduced grid (2^-10,
# best on CURVES, MNIST and FACES) for a fixed training-time budget, both at once, one torch
# thread each (so both see the same load).
#   DATASET (default curves; also mnist, faces), KFRA_STEPS (default 5000),
#   ADAM_BUDGET seconds of Adam training time (default 3000),
#   GNOPT_DATA (CURVES and FACES are generated and cached there; mnist.npz is read from there).
# Writes results/$DATASET-long/{kfra,adam-best}/ and results/$DATASET-long/compare.png; then
# scripts/time_to_target.py prints the time-to-target table.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-curves}
KFRA_STEPS=${KFRA_STEPS:-5000}
ADAM_BUDGET=${ADAM_BUDGET:-3000}
GNOPT=${GNOPT:-.venv/bin/gnopt}
OUT=results/$DATASET-long
NAME=$(echo "$DATASET" | tr a-z A-Z)
mkdir -p "$OUT"
$GNOPT train --dataset "$DATASET" --optimizer kfra --steps "$KFRA_STEPS" --eval-every 100 --threads 1 --quiet \
  --out "$OUT/kfra" > "$OUT/kfra.log" 2>&1 &
$GNOPT train --dataset "$DATASET" --optimizer adam --lr 0.0009765625 --time-budget "$ADAM_BUDGET" --eval-every 500 \
  --threads 1 --quiet --out "$OUT/adam-best" > "$OUT/adam-best.log" 2>&1 &
wait
$GNOPT plot "$OUT/kfra" "$OUT/adam-best" --metric loss --out "$OUT/compare.png" --title "$NAME: minibatch objective"
.venv/bin/python scripts/time_to_target.py "$OUT/kfra" "$OUT/adam-best" | tee "$OUT/time_to_target.md"
