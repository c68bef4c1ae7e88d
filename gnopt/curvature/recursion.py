"""One backward recursion over the stages, parameterised by what is propagated.

Every estimator walks the layers from the output down, alternating two moves:

* through the transfer function of stage λ (from a_λ to h_λ):
  multiply by B_λ = diag(f'(h_λ)) on both sides (eq. 8, 22), plus D_λ for the Hessian (eq. 10);
* through the linear map of stage λ (from h_λ to a_{λ-1}): M ↦ W_λᵀ M W_λ.

What is propagated differs (a :class:`Propagator`):

===============  =================================  ============================
propagator       state                              estimator
===============  =================================  ============================
PerExample       (N, d, d) per-example matrices      exact GN blocks; Hessian blocks (+ D_λ, eq. 8)
SquareRoot       (R, N, d) square-root columns       KFLR (eq. 23–25), KFAC (eq. 59)
Expected         (d, d) expected matrix              KFRA (eq. 26)
===============  =================================  ============================
"""

from __future__ import annotations

from typing import List, Optional, Protocol

import torch
from torch import Tensor

from ..layers import Network
from ..numerics import is_diagonal
from .trace import Trace, gram, symmetric_product


class Propagator(Protocol):
    needs_second: bool

    def activation(self, state: object, d1: Tensor, d2: Optional[Tensor]) -> object:
        """From curvature w.r.t. a_λ to curvature w.r.t. h_λ."""

    def linear(self, state: object, weight: Tensor) -> object:
        """From curvature w.r.t. h_λ to curvature w.r.t. a_{λ-1}; ``weight`` (d_out, d_in)."""

    def factor(self, state: object) -> Tensor:
        """The layer's pre-activation quantity from the state w.r.t. h_λ."""


def backward(net: Network, trace: Trace, top: object, prop: Propagator) -> List[Tensor]:
    """Run the recursion from ``top`` (curvature w.r.t. the model output) to the first layer.

    Returns ``prop.factor`` of every stage, in forward order.
    """
    out: List[Tensor] = [torch.empty(0)] * len(net.stages)
    state = top
    for st in reversed(net.stages):
        if not (st.is_identity and state is not None and not prop.needs_second):  # f' = 1: nothing to do
            h = trace.preacts[st.index]
            d1, d2 = st.derivatives(h, second=prop.needs_second, a=trace.activation(st.index))
            state = prop.activation(state, d1, d2)
        out[st.index] = prop.factor(state)
        if st.index > 0:
            state = prop.linear(state, st.linear.weight.detach())
    return out


class PerExample:
    """Per-example pre-activation matrices (N, d, d): 𝒢_λ (eq. 22) or ℋ_λ (eq. 8).

    For the Hessian (``hessian=True``) the state is a pair (matrices, ∂E/∂a (N, d)), and
    D_λ = diag(f''(h_λ) ⊙ ∂E/∂a_λ) (eq. 10) is added after the B_λ sandwich.
    """

    def __init__(self, hessian: bool) -> None:
        self.hessian = hessian
        self.needs_second = hessian

    def activation(self, state: object, d1: Tensor, d2: Optional[Tensor]) -> object:
        M, g = state  # type: ignore[misc]
        M = d1.unsqueeze(-1) * M * d1.unsqueeze(-2)
        if self.hessian:
            assert d2 is not None
            M = M + torch.diag_embed(d2 * g)
            g = d1 * g
        return M, g

    def linear(self, state: object, weight: Tensor) -> object:
        M, g = state  # type: ignore[misc]
        M = weight.T @ M @ weight
        return M, (g @ weight if g is not None else None)

    def factor(self, state: object) -> Tensor:
        return state[0]  # type: ignore[index]


class SquareRoot:
    """Square-root columns C (R, N, d) with 𝒢 = Σ_r c c^T per example (eq. 23–24).

    The factor is (1/N) Σ_n Σ_r C C^T (eq. 25). ``scale`` multiplies it (1/S for KFAC).
    """

    needs_second = False

    def __init__(self, n: int, scale: float = 1.0) -> None:
        self.n = n
        self.scale = scale

    def activation(self, state: object, d1: Optional[Tensor], d2: Optional[Tensor]) -> object:
        return state if d1 is None else state * d1.unsqueeze(0)  # type: ignore[operator]

    def linear(self, state: object, weight: Tensor) -> object:
        return state @ weight  # type: ignore[operator]

    def factor(self, state: object) -> Tensor:
        """(scale/N) Σ C Cᵀ over the columns and examples: a symmetric product (5/8 of a
        GEMM's work at d ≥ 512), exactly symmetric."""
        C = state.reshape(-1, state.shape[-1])  # type: ignore[attr-defined]
        return gram(C).mul_(self.scale / self.n)


class Expected:
    """The expected matrix E[𝒢] (d, d), passed down whole (KFRA, eq. 26, Algorithm 1).

    Through a transfer function: E[𝒢_h] ≈ E[𝒢_a] ⊙ (1/N) Σ_n f'_n f'_nᵀ. The top of the
    recursion is exact: the initial state is the model-output per-example data, and the
    first ``activation`` computes (1/N) Σ_n B_n H_n B_n via ``top_fn``.

    ``reduce`` (data-parallel training, :mod:`gnopt.distributed`): maps this process's
    mean over its examples to the global mean. The recursion is not linear in the batch,
    so the top matrix and every (1/N) Σ f' f'ᵀ are reduced here, at each layer; ``None``
    (one process) leaves the computation untouched.
    """

    needs_second = False

    def __init__(self, top_fn, reduce=None) -> None:  # top_fn(d1) -> (K, K)
        self.top_fn = top_fn
        self.reduce = reduce

    def activation(self, state: object, d1: Tensor, d2: Optional[Tensor]) -> object:
        if state is None:
            top = self.top_fn(d1)
            top = top if self.reduce is None else self.reduce(top)
            # element-wise losses (mse, bce): E[𝒢_L] is exactly diagonal; carried as its
            # diagonal (d,) until the first linear map, which then costs one GEMM, not two.
            # Otherwise made exactly symmetric once: every later step keeps it so (Hadamard
            # products of symmetric matrices, mirrored symmetric products), and the factors
            # need no symmetrisation afterwards.
            return top.diagonal().clone() if is_diagonal(top) else 0.5 * (top + top.T)
        if state.dim() == 1:  # type: ignore[attr-defined]
            ff = (d1 * d1).mean(0)  # the diagonal of (1/N) Σ f' f'ᵀ
        else:
            ff = gram(d1).div_(d1.shape[0])
        if self.reduce is not None:
            ff = self.reduce(ff)
        return state * ff  # type: ignore[operator]

    def linear(self, state: object, weight: Tensor) -> object:
        """Wᵀ E[𝒢] W, exactly symmetric, the second product only on and above the diagonal."""
        if state.dim() == 1:  # type: ignore[attr-defined]
            return symmetric_product(weight, state[:, None] * weight)  # type: ignore[index]
        return symmetric_product(weight, state @ weight)  # type: ignore[operator]

    def factor(self, state: object) -> Tensor:
        return torch.diag(state) if state.dim() == 1 else state  # type: ignore[attr-defined,return-value]
