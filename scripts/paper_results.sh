#!/usr/bin/env bash
# Reproduce the README's reduced Figure 2/3 comparisons on this CPU.
#   SO_STEPS  updates per second-order run (default 150)
#   FO_STEPS  updates per Adam run (default 1500: first-order methods get 10x the updates, as in
#             the paper's 40,000 vs 5,000 (8x))
#   GRID_STEPS  updates per cell of the reduced Adam grid (default 500)
#   JOBS    runs in parallel, one torch thread each (default 2)
#   GNOPT_DATA  data directory holding mnist.npz and olivetti_faces.npz
# Writes results/<dataset>/<run>/ (metrics.jsonl, config.json, summary.json, PNGs),
# results/<dataset>/compare.png and results/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SO_STEPS=${SO_STEPS:-150}
FO_STEPS=${FO_STEPS:-1500}
GRID_STEPS=${GRID_STEPS:-500}
JOBS=${JOBS:-2}
GNOPT=${GNOPT:-.venv/bin/gnopt}
OUT=results
mkdir -p "$OUT"
common="--threads 1 --quiet"

run() {  # dataset name optimizer [extra args...]
  local ds=$1 name=$2 opt=$3; shift 3
  [ -f "$OUT/$ds/$name/summary.json" ] && return 0
  rm -rf "$OUT/$ds/$name"
  local steps=$SO_STEPS ev=50
  case $opt in adam|sgd|momentum|nesterov) steps=$FO_STEPS; ev=250;; esac
  $GNOPT train --dataset "$ds" --optimizer "$opt" --steps "$steps" --eval-every "$ev" $common --out "$OUT/$ds/$name" "$@" \
    > "$OUT/$ds/$name.log" 2>&1 || echo "FAILED: $ds $name (see $OUT/$ds/$name.log)"
}
export -f run; export OUT SO_STEPS FO_STEPS GNOPT common

grid() {  # dataset
  $GNOPT grid --dataset "$1" --methods adam --lr-exponents 8,10,12 --decay-fractions 1 --steps "$GRID_STEPS" \
    --threads 1 --quiet --no-plot --out "$OUT/$1/grid" > "$OUT/$1/grid.log" 2>&1
}
export -f grid

best_lr() {  # dataset -> learning rate of the best grid cell
  .venv/bin/python - "$OUT/$1/grid/grid.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
print(next(r["lr"] for r in rows if r["best"]))
PY
}

for ds in curves mnist faces mnist_oddeven; do mkdir -p "$OUT/$ds"; done
# phase 1: second-order runs, Adam at the default rate, and the reduced grids
{
  for ds in curves mnist faces; do
    echo "$ds kfra kfra"; echo "$ds kfac kfac"; echo "$ds adam-default adam"
  done
  echo "mnist_oddeven kflr kflr --curvature-ema 0.9"; echo "mnist_oddeven kfac kfac --curvature-ema 0.9"
  echo "mnist_oddeven kfra kfra --curvature-ema 0.9"; echo "mnist_oddeven adam-default adam"
  echo "GRID curves"; echo "GRID mnist"; echo "GRID faces"; echo "GRID mnist_oddeven"
} | xargs -P "$JOBS" -L 1 bash -c 'if [ "$0" = GRID ]; then grid "$1"; else run "$0" "$@"; fi'
# phase 2: Adam at the best learning rate of each reduced grid, for the same budget
for ds in curves mnist faces mnist_oddeven; do
  echo "$ds adam-best adam --lr $(best_lr $ds)"
done | xargs -P "$JOBS" -L 1 bash -c 'run "$0" "$@"'
# plots and the table
for ds in curves mnist faces mnist_oddeven; do
  runs=$(ls -d "$OUT/$ds"/*/ | grep -v /grid/ || true)
  $GNOPT plot $runs --metric loss --out "$OUT/$ds/compare.png" --title "$ds: minibatch objective" || true
done
.venv/bin/python scripts/summarise.py "$OUT" > "$OUT/summary.md"
cat "$OUT/summary.md"
