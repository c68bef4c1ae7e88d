#!/usr/bin/env python3
"""The training objective of a run's final parameters evaluated in float32 and in float64.

Near zero loss one may suspect a float32 objective of being rounding noise; if the float64
value agrees, it is not (README, the mixture classifier: 3.77e-08 both ways).

    python scripts/precision_floor.py RUN [RUN...]      (GNOPT_DATA as for gnopt train)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gnopt.experiments.checkpoint import load_checkpoint
from gnopt.experiments.config import TrainConfig
from gnopt.experiments.evaluate import evaluate
from gnopt.experiments.runner import build_model, load_data


def main(runs) -> int:
    torch.set_num_threads(1)
    for run in runs:
        run = Path(run)
        config = TrainConfig.from_json((run / "config.json").read_text())
        data = load_data(config)
        ck = load_checkpoint(run / "checkpoint.pt")
        model = build_model(config, data.input_dim)
        model.load_state_dict(ck["model"])
        y = data.y
        f32 = evaluate(model.float(), data.x.float(), y.float() if y.is_floating_point() else y, data.loss)["objective"]
        f64 = evaluate(model.double(), data.x.double(), y.double() if y.is_floating_point() else y, data.loss)["objective"]
        print(f"{run}: step {ck['step']}; loss on the training set, float32 {f32:.3g}, float64 {f64:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
