#!/usr/bin/env bash
# Figure 3 (section 5.2): the MNIST odd/even mixture classifier (eq. 27), KFLR, KFAC and KFRA
# (curvature moving average 0.9, as in the paper's Figure 3) for STEPS updates each, then Adam at
# 2^-10 for ADAM_BUDGET seconds of training time; one run at a time, one torch thread.
#   STEPS (default 1000), ADAM_BUDGET (default 300; 0 skips Adam), METHODS (default "kflr kfac kfra"),
#   JOBS (runs at once, default 1), OUT (default results/mixture-long), ARGS (more `gnopt train`
#   flags for the second-order runs), GNOPT_DATA (mnist.npz is read from there).
# Writes $OUT/{kflr,kfac,kfra,adam-best}/, compare.png and error.png; existing runs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1000}
ADAM_BUDGET=${ADAM_BUDGET:-300}
METHODS=${METHODS:-kflr kfac kfra}
JOBS=${JOBS:-1}
ARGS=${ARGS:-}
GNOPT=${GNOPT:-.venv/bin/gnopt}
OUT=${OUT:-results/mixture-long}
mkdir -p "$OUT"
for m in $METHODS; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  # shellcheck disable=SC2086  # ARGS is a list of flags
  [ -e "$OUT/$m/metrics.jsonl" ] || $GNOPT train --dataset mnist_oddeven --optimizer "$m" --curvature-ema 0.9 \
    --steps "$STEPS" --eval-every 100 --threads 1 --quiet $ARGS --out "$OUT/$m" > "$OUT/$m.log" 2>&1 &
done
wait
[ "$ADAM_BUDGET" = 0 ] || [ -e "$OUT/adam-best/metrics.jsonl" ] || $GNOPT train --dataset mnist_oddeven --optimizer adam --lr 0.0009765625 \
  --time-budget "$ADAM_BUDGET" --eval-every 500 --threads 1 --quiet --out "$OUT/adam-best" > "$OUT/adam-best.log" 2>&1
RUNS=()
for r in $METHODS adam-best; do if [ -e "$OUT/$r/metrics.jsonl" ]; then RUNS+=("$OUT/$r"); fi; done
$GNOPT plot "${RUNS[@]}" --metric loss --out "$OUT/compare.png" \
  --title "MNIST odd/even mixture: minibatch objective"
$GNOPT plot "${RUNS[@]}" --metric train_error_rate --out "$OUT/error.png" \
  --title "MNIST odd/even mixture: training error rate"
