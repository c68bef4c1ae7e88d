#!/usr/bin/env bash
# The GPU check of issue 5, prepared to run in one call on a GPU machine (the project's
# device tool): from the repository root,
#
#     OUT=/some/folder bash scripts/gpu_check.sh [STAGE...]
#
# STAGEs (default: tests syncs step, estimated at ~5 minutes on an H200 machine, never run yet;
# `factors` adds an estimated ~3 more,
# so run it as a second call if one call's limit is 10 minutes):
# tests:   the CUDA tests (tests/test_cuda.py: the same factors, solves and optimiser paths on
#    the GPU as on the CPU, in float64);
# syncs:   host synchronisations per update of the default and every-step KFRA on CUDA
#    (torch.cuda.set_sync_debug_mode counts them);
# step:    `gnopt bench step --device cuda` on the paper's MNIST autoencoder at batch 1000 and
#    4000: Adam, the default, KFRA and KFAC every step;
# factors: `gnopt bench factors --device cuda` at batch 1000: gnopt's KFRA/KFLR/KFAC factors and,
#    when BackPACK can be imported, BackPACK's.
#
# Needs a python3 with a CUDA build of torch, numpy and pytest (the device machine's image
# has them). BackPACK is not there: its pure-Python wheels, downloaded here into .whl/
# (ignored by git; see the README's GPU note), are installed into /tmp/site when that folder
# travels (the device tool's `carry`). Everything it prints is also written under $OUT.
set -u -o pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

STAGES=${*:-tests syncs step}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
    2>&1 | tee "$OUT/device.txt"

want() { [[ " $STAGES " == *" $1 "* ]]; }

want tests && timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.txt"

want syncs && timeout 120 $PY - <<'EOF' 2>&1 | tee "$OUT/cuda-syncs.txt"
import warnings

import torch

from gnopt import make_optimizer
from gnopt.bench.factors import PAPER_WIDTHS, _setup

for name, opts in [("default", {}), ("every step", {"factor_period": 1, "step_size_fraction": 1.0})]:
    model, x, y = _setup(PAPER_WIDTHS, "sigmoid", 1000, 0)
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    opt = make_optimizer("kfra", model, "bce", **opts)
    for _ in range(20):
        opt.step(x, y)
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(20):
            opt.step(x, y)
    torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    print(f"KFRA {name}: {len(syncs) / 20:.1f} host synchronisations per update (20 updates)")
EOF

want step && timeout 300 $PY -m gnopt bench step --device cuda --batches 1000,4000 --configs adam,kfra-default,kfra,kfac \
    --repeats 5 --json "$OUT/step-cuda.json" 2>&1 | tee "$OUT/step-cuda.txt"

want factors && timeout 420 $PY -m gnopt bench factors --device cuda --batch 1000 --backpack-kflr-repeats 1 \
    --json "$OUT/factors-cuda.json" 2>&1 | tee "$OUT/factors-cuda.txt"
