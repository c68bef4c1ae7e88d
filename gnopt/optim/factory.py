"""``make_optimizer(name, model, loss, **options)``: one door to every optimiser by name."""

from __future__ import annotations

from typing import Union

from torch import nn

from ..losses import Loss
from .first_order import METHODS as FIRST_ORDER
from .first_order import FirstOrder
from .gauss_newton import GaussNewton
from .hessian_free import HessianFree

SECOND_ORDER = ("kfra", "kflr", "kfac", "block")
OPTIMIZERS = SECOND_ORDER + ("hf",) + FIRST_ORDER

Optimizer = Union[GaussNewton, HessianFree, FirstOrder]


def make_optimizer(name: str, model: nn.Module, loss: "str | Loss", **options) -> Optimizer:
    """``name`` in kfra/kflr/kfac/block (GaussNewton), hf (HessianFree), sgd/momentum/nesterov/adam."""
    if name in SECOND_ORDER:
        return GaussNewton(model, loss, curvature=name, **options)
    if name == "hf":
        return HessianFree(model, loss, **options)
    if name in FIRST_ORDER:
        return FirstOrder(model, loss, method=name, **options)
    raise ValueError(f"unknown optimiser {name!r}; use one of {OPTIMIZERS}")
