#!/usr/bin/env bash
# The README's long comparisons and time-to-target measurements (issues 4 and 5):
# default KFRA for KFRA_STEPS updates against Adam at the best rate of the reduced grid (2^-10,
# best on CURVES, MNIST and FACES) for a fixed training-time budget, both at once, one torch
# thread each (so both see the same load).
#   DATASET (default curves; also mnist, faces), KFRA_STEPS (default 5000),
#   SECOND_ORDER (default kfra; kfac, kflr: the same run with that curvature, in its own folder),
#   ADAM_BUDGET seconds of Adam training time (default 3000; 0: no Adam run, e.g. when adding
#   a KFAC run next to an earlier pair),
#   GNOPT_DATA (CURVES and FACES are generated and cached there; mnist.npz is read from there).
# Writes results/$DATASET-long/{$SECOND_ORDER,adam-best}/, compare.png and sq_error.png; then
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
SO=${SECOND_ORDER:-kfra}
$GNOPT train --dataset "$DATASET" --optimizer "$SO" --steps "$KFRA_STEPS" --eval-every 100 --threads 1 --quiet \
  --out "$OUT/$SO" > "$OUT/$SO.log" 2>&1 &
if [ "$ADAM_BUDGET" != 0 ]; then
  $GNOPT train --dataset "$DATASET" --optimizer adam --lr 0.0009765625 --time-budget "$ADAM_BUDGET" --eval-every 500 \
    --threads 1 --quiet --out "$OUT/adam-best" > "$OUT/adam-best.log" 2>&1 &
fi
wait
RUNS=$(for r in kfra kflr kfac adam-best; do [ -f "$OUT/$r/metrics.jsonl" ] && echo "$OUT/$r"; done)
# shellcheck disable=SC2086
$GNOPT plot $RUNS --metric loss --out "$OUT/compare.png" --title "$NAME: minibatch objective"
# shellcheck disable=SC2086
$GNOPT plot $RUNS --metric train_sq_error --out "$OUT/sq_error.png" --title "$NAME: squared error per image (training set)"
.venv/bin/python scripts/time_to_target.py "$OUT/$SO" "$OUT/adam-best" | tee "$OUT/time_to_target$([ "$SO" = kfra ] || echo "-$SO").md"
