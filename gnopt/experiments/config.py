"""Run configurations as frozen dataclasses, with JSON round trips.

A :class:`TrainConfig` describes one training run completely (data, model, optimiser, budget,
logging); it is written to ``config.json`` in the run folder and is all that ``--resume``
needs besides the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

__all__ = [
    "TrainConfig", "SECOND_ORDER", "FIRST_ORDER", "OPTIMIZERS", "DATASETS", "PAPER_STEPS",
    "DEFAULT_TIME_BUDGET", "optimizer_family", "RESUME_OVERRIDABLE", "MATMUL_PRECISIONS",
]

SECOND_ORDER = ("kfra", "kflr", "kfac", "block")
FIRST_ORDER = ("adam", "sgd", "momentum", "nesterov")
OPTIMIZERS = SECOND_ORDER + ("hf",) + FIRST_ORDER
DATASETS = ("curves", "mnist", "faces", "mnist_oddeven")

PAPER_STEPS = {
    # section 5.1: second-order 5,000 updates (20,000 on FACES); first-order 40,000 (160,000 on FACES)
    "second": {"curves": 5000, "mnist": 5000, "faces": 20000, "mnist_oddeven": 5000},
    "first": {"curves": 40000, "mnist": 40000, "faces": 160000, "mnist_oddeven": 40000},
}
DEFAULT_TIME_BUDGET = 180.0
"""Seconds of training when neither ``steps`` nor ``time_budget`` is given (``gnopt train``)."""

RESUME_OVERRIDABLE = ("steps", "time_budget", "eval_every", "checkpoint_every", "eval_chunk", "eval_averaged",
                      "device")
"""Fields that ``--resume`` may change; all others must match the run's ``config.json``."""


def optimizer_family(name: str) -> str:
    """"second" (Kronecker-factored / block GN), "hf" or "first"."""
    if name in SECOND_ORDER:
        return "second"
    if name == "hf":
        return "hf"
    if name in FIRST_ORDER:
        return "first"
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's values


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Data: ``dataset`` (:data:`DATASETS`), ``limit`` (first N training examples only),
    ``data_dir`` (else ``$GNOPT_DATA``), ``dataset_opts`` (passed to ``load_dataset``).
    Model (:mod:`gnopt.models`): ``widths`` (encoder widths; default the paper's),
    ``activation``, ``code_linear`` (``None``: the net's default), ``init``, ``dtype``.
    Optimiser: ``optimizer`` (:data:`OPTIMIZERS`), ``batch_size``, ``seed`` (model init,
    data order and the optimiser's sampling), ``weight_decay`` η, ``curvature_ema``,
    ``damping`` ("factored" eq. 36 or "eigen"), ``lr``/``decay_period`` (first order),
    ``opt_options`` (any further keyword arguments of the optimiser).
    Budget and logging: ``steps`` (updates), ``time_budget`` (seconds of training time,
    evaluation excluded), ``eval_every`` (full-training-set evaluation period; 0 = only at
    the end), ``eval_chunk`` (examples per evaluation forward pass), ``eval_averaged``
    (also evaluate the Polyak-averaged parameters), ``checkpoint_every``.
    Arithmetic: ``matmul_precision`` — :func:`torch.set_float32_matmul_precision` for the
    run's duration (restored afterwards): ``"highest"`` (default, IEEE float32 products),
    ``"high"`` or ``"medium"`` (on CPUs with AVX512-BF16 oneDNN then computes float32
    products from bfloat16 pieces: about twice as fast here at close to float32 accuracy,
    see the README's performance section).
    Device: ``device`` — the torch device of the model, the data and the optimiser state
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...). A run may be resumed on another device; it
    then continues correctly, but not bit-identically (other kernels round differently).
    """

    dataset: str = "curves"
    optimizer: str = "kfra"
    steps: Optional[int] = None
    time_budget: Optional[float] = None
    batch_size: int = 1000
    seed: int = 0
    weight_decay: float = 1e-5
    curvature_ema: float = 0.0
    damping: str = "factored"
    lr: float = 1e-3
    decay_period: Optional[int] = None
    opt_options: Dict[str, Any] = field(default_factory=dict)
    widths: Optional[Tuple[int, ...]] = None
    activation: str = "sigmoid"
    code_linear: Optional[bool] = None
    init: str = "sparse"
    dtype: str = "float32"
    limit: Optional[int] = None
    data_dir: Optional[str] = None
    dataset_opts: Dict[str, Any] = field(default_factory=dict)
    eval_every: int = 25  # a full CURVES evaluation costs about one KFRA update on a 2-core CPU
    eval_chunk: int = 5000
    eval_averaged: bool = True
    checkpoint_every: int = 100
    matmul_precision: str = "highest"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose from {DATASETS}")
        optimizer_family(self.optimizer)
        if self.widths is not None:
            object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps must be >= 0; got {self.steps}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"time_budget must be > 0 seconds; got {self.time_budget}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1; got {self.limit}")
        if self.eval_every < 0 or self.checkpoint_every < 1 or self.eval_chunk < 1:
            raise ValueError("eval_every must be >= 0, checkpoint_every and eval_chunk >= 1")
        if self.damping not in ("factored", "eigen"):
            raise ValueError(f"damping must be 'factored' or 'eigen'; got {self.damping!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {self.dtype!r}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}; got {self.matmul_precision!r}")
        import torch

        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device {self.device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1'): {e}") from e

    @property
    def family(self) -> str:
        return optimizer_family(self.optimizer)

    def resolved(self) -> "TrainConfig":
        """Fill in the budget: with neither ``steps`` nor ``time_budget``, the paper's number
        of updates under a :data:`DEFAULT_TIME_BUDGET` time limit; with only a time budget,
        the paper's number of updates as the cap."""
        steps, budget = self.steps, self.time_budget
        if steps is None:
            fam = "first" if self.family == "first" else "second"
            steps = PAPER_STEPS[fam][self.dataset]
            if budget is None:
                budget = DEFAULT_TIME_BUDGET
        return dataclasses.replace(self, steps=steps, time_budget=budget)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths"] = None if self.widths is None else list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        d = dict(d)
        if d.get("widths") is not None:
            d["widths"] = tuple(d["widths"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
