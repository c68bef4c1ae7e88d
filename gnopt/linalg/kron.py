"""Kronecker-factored matrix-vector products.

Convention (project-wide, see ``docs/DESIGN.md``): a linear layer's parameter matrix
``V = [W | b]`` has shape ``(d_out, d_in')`` with ``d_in' = d_in (+1 for the bias)`` and is
flattened row-major, ``vec_r(V) = V.reshape(-1)``.  In that order the Kronecker-factored
curvature block is ``torch.kron(G, Q)`` with ``G`` the ``(d_out, d_out)`` pre-activation
factor and ``Q`` the ``(d_in', d_in')`` activation factor.  (The paper, Botev et al. 2017,
uses column stacking and writes the same matrix as ``Q ⊗ G``, eq. 20 and eq. 35.)

The identity used throughout is::

    kron(G, Q) @ vec_r(V) == vec_r(G @ V @ Q.T) == vec_r(G @ V @ Q)   (Q symmetric)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kron_matvec", "kron_to_dense", "vec_r", "unvec_r"]


def kron_matvec(G: Tensor, Q: Tensor, V: Tensor) -> Tensor:
    """Apply the Kronecker-factored block ``kron(G, Q)`` to a parameter matrix.

    Computes ``G @ V @ Q``, which equals ``unvec_r(kron(G, Q) @ vec_r(V))`` for symmetric
    ``Q`` (the paper's ``(Q ⊗ G) vec(V)`` in column-stacking notation, eq. 35 without damping),
    at cost ``O(d_out² d_in' + d_out d_in'²)`` instead of ``O(d_out² d_in'²)``.

    Args:
        G: ``(..., d_out, d_out)`` symmetric pre-activation factor.
        Q: ``(..., d_in', d_in')`` symmetric activation factor.
        V: ``(..., d_out, d_in')`` parameter-shaped matrix; leading batch dimensions of
            ``G``, ``Q`` and ``V`` broadcast as in :func:`torch.matmul`.

    Returns:
        ``(..., d_out, d_in')`` tensor ``G @ V @ Q``.
    """
    if V.dim() < 2:
        raise ValueError(f"V must have at least 2 dims (d_out, d_in'), got shape {tuple(V.shape)}")
    if G.shape[-2:] != (V.shape[-2], V.shape[-2]) or Q.shape[-2:] != (V.shape[-1], V.shape[-1]):
        raise ValueError(
            f"shape mismatch: G {tuple(G.shape)}, Q {tuple(Q.shape)}, V {tuple(V.shape)}; "
            "expected G (d_out, d_out), Q (d_in', d_in'), V (..., d_out, d_in')"
        )
    return G @ V @ Q


def kron_to_dense(G: Tensor, Q: Tensor) -> Tensor:
    """Dense ``(d_out·d_in', d_out·d_in')`` matrix ``torch.kron(G, Q)`` (row-major order).

    Meant for tests and small layers only (memory ``O(d_out² d_in'²)``).
    """
    return torch.kron(G, Q)


def vec_r(V: Tensor) -> Tensor:
    """Row-major flattening of the last two dims: ``(..., m, n) -> (..., m·n)``."""
    return V.reshape(*V.shape[:-2], V.shape[-2] * V.shape[-1])


def unvec_r(v: Tensor, shape: tuple[int, int]) -> Tensor:
    """Inverse of :func:`vec_r`: ``(..., m·n) -> (..., m, n)`` with ``shape = (m, n)``."""
    return v.reshape(*v.shape[:-1], *shape)
