"""Optimisers: practical Gauss-Newton (App. B), Hessian-free, and first-order baselines."""

from .factory import OPTIMIZERS, make_optimizer
from .first_order import FirstOrder
from .gauss_newton import GaussNewton
from .hessian_free import HessianFree
from .info import StepInfo

__all__ = ["GaussNewton", "HessianFree", "FirstOrder", "StepInfo", "make_optimizer", "OPTIMIZERS"]
