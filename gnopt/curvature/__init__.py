"""Curvature engine: exact blocks, the Hessian recursion and the Kronecker factors."""

from .exact import (expected_preactivation_gn, gauss_newton_blocks, gauss_newton_matrix, hessian_blocks,
                    output_jacobian)
from .factors import METHODS, KroneckerFactors, factors_from_trace, kronecker_factors
from .trace import Trace, activation_factor, forward_trace

__all__ = [
    "hessian_blocks", "gauss_newton_blocks", "gauss_newton_matrix", "expected_preactivation_gn",
    "output_jacobian", "kronecker_factors", "factors_from_trace", "KroneckerFactors", "METHODS",
    "Trace", "forward_trace", "activation_factor",
]
