#!/usr/bin/env bash
# Figure 3 (section 5.2): the MNIST odd/even mixture classifier (eq. 27), KFLR, KFAC and KFRA
# (curvature moving average 0.9, as in the paper's Figure 3) for STEPS updates each, then Adam at
# 2^-10 for ADAM_BUDGET seconds of training time; one run at a time, one torch thread.
#   STEPS (default 1000), ADAM_BUDGET (default 300), GNOPT_DATA (mnist.npz is read from there).
# Writes results/mixture-long/{kflr,kfac,kfra,adam-best}/, compare.png and error.png.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1000}
ADAM_BUDGET=${ADAM_BUDGET:-300}
GNOPT=${GNOPT:-.venv/bin/gnopt}
OUT=results/mixture-long
mkdir -p "$OUT"
for m in kflr kfac kfra; do
  [ -e "$OUT/$m/metrics.jsonl" ] || $GNOPT train --dataset mnist_oddeven --optimizer "$m" --curvature-ema 0.9 \
    --steps "$STEPS" --eval-every 100 --threads 1 --quiet --out "$OUT/$m" > "$OUT/$m.log" 2>&1
done
[ -e "$OUT/adam-best/metrics.jsonl" ] || $GNOPT train --dataset mnist_oddeven --optimizer adam --lr 0.0009765625 \
  --time-budget "$ADAM_BUDGET" --eval-every 500 --threads 1 --quiet --out "$OUT/adam-best" > "$OUT/adam-best.log" 2>&1
$GNOPT plot "$OUT/kflr" "$OUT/kfac" "$OUT/kfra" "$OUT/adam-best" --metric loss --out "$OUT/compare.png" \
  --title "MNIST odd/even mixture: minibatch objective"
$GNOPT plot "$OUT/kflr" "$OUT/kfac" "$OUT/kfra" "$OUT/adam-best" --metric train_error_rate --out "$OUT/error.png" \
  --title "MNIST odd/even mixture: training error rate"
