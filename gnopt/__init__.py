"""gnopt: practical Gauss-Newton optimisation for deep learning (Botev, Ritter & Barber, 2017)."""

from .curvature import (KroneckerFactors, expected_preactivation_gn, gauss_newton_blocks, gauss_newton_matrix,
                        hessian_blocks, kronecker_factors)
from .gvp import gn_quadratic, gn_vector_product
from .layers import ACTIVATIONS, parse_model
from .losses import (BCEWithLogitsLoss, BinaryMixtureLoss, CrossEntropyLoss, CustomLoss, Loss, MSELoss,
                     get_loss)
from .optim import OPTIMIZERS, FirstOrder, GaussNewton, HessianFree, StepInfo, make_optimizer
from . import distributed

__version__ = "0.1.0"

__all__ = [
    "hessian_blocks", "gauss_newton_blocks", "gauss_newton_matrix", "expected_preactivation_gn",
    "kronecker_factors", "KroneckerFactors", "parse_model", "ACTIVATIONS",
    "GaussNewton", "HessianFree", "FirstOrder", "StepInfo", "make_optimizer", "OPTIMIZERS",
    "gn_vector_product", "gn_quadratic",
    "Loss", "MSELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "CustomLoss", "BinaryMixtureLoss", "get_loss",
    "distributed",
]
