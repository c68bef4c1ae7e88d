"""Linear algebra for Kronecker-factored Gauss-Newton (Botev et al. 2017, Appendix B).

* :mod:`.kron` — ``kron_matvec`` (``kron(G, Q) vec_r(V) = vec_r(G V Q)``).
* :mod:`.damped` — damped Kronecker solves, eq. 33–38 (``eigen`` exact, ``factored``).
* :mod:`.cg` — conjugate gradients on flat tensors or lists of tensors.
"""

from .cg import CGInfo, conjugate_gradient
from .damped import (
    EigenFactors,
    FactoredFactors,
    LinalgFailure,
    LinalgFallbackWarning,
    damped_kron_matvec,
    damped_kron_solve,
    factored_omega,
    mean_trace,
)
from .kron import kron_matvec, kron_to_dense, unvec_r, vec_r

__all__ = [
    "CGInfo",
    "conjugate_gradient",
    "EigenFactors",
    "FactoredFactors",
    "LinalgFailure",
    "LinalgFallbackWarning",
    "damped_kron_matvec",
    "damped_kron_solve",
    "factored_omega",
    "mean_trace",
    "kron_matvec",
    "kron_to_dense",
    "unvec_r",
    "vec_r",
]
