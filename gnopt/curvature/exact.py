"""Exact references: dense per-layer GN and Hessian blocks, and the full GN matrix.

These are the oracles of the test ladder (DESIGN.md) and serve the small-net optimiser
("block" curvature) and the analyses. Memory grows as N·d² per layer (blocks: d_out²·d_in'²),
so they are meant for small nets.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from ..layers import Network
from ..losses import Loss
from ..params import flatten, layer_matrix, param_dict, unflatten
from .common import prepare
from .recursion import PerExample, backward
from .trace import Trace, augmented


def per_example_preactivation(net: Network, trace: Trace, y: Tensor, loss: Loss, hessian: bool) -> List[Tensor]:
    """Per-example 𝒢_λ (eq. 22) or ℋ_λ (eq. 8), each (N, d_λ, d_λ), forward order."""
    h = trace.output
    top = (loss.hessian(h, y), loss.grad(h, y)) if hessian else (loss.psd_hessian(h, y), None)
    return backward(net, trace, top, PerExample(hessian))


def dense_blocks(net: Network, trace: Trace, per_example: List[Tensor]) -> List[Tensor]:
    """(1/N) Σ_n kron(M_n, ā_n ā_nᵀ) per layer (eq. 7, 16): row-major [W | b] blocks."""
    out = []
    for st, M in zip(net.stages, per_example):
        ab = augmented(trace.inputs[st.index], st.has_bias)
        n, do, di = M.shape[0], M.shape[1], ab.shape[1]
        blk = torch.einsum("nik,nj,nl->ijkl", M, ab, ab) / n
        out.append(blk.reshape(do * di, do * di))
    return out


def gauss_newton_blocks(model: nn.Module, x: Tensor, y: Tensor, loss: "str | Loss") -> List[Tensor]:
    """The exact diagonal blocks of the batch-mean GN matrix (eq. 13/16), one per ``nn.Linear``.

    Per-example pre-activation GN matrices by eq. (22), then (1/N) Σ_n kron(𝒢_n, ā_n ā_nᵀ).
    Each block is (d_out·d_in', d_out·d_in') in the row-major ``[W | b]`` order.
    """
    net, lossfn, trace = prepare(model, x, y, loss)
    with torch.no_grad():
        return dense_blocks(net, trace, per_example_preactivation(net, trace, y, lossfn, hessian=False))


def hessian_blocks(model: nn.Module, x: Tensor, y: Tensor, loss: "str | Loss") -> List[Tensor]:
    """The exact diagonal Hessian blocks of the batch-mean loss by the recursion (7)–(10).

    One backward pass of per-example pre-activation Hessians ℋ_λ = B W ℋ_{λ+1} Wᵀ B + D_λ,
    then the average of the sample blocks kron(ℋ_n, ā_n ā_nᵀ) (eq. 7). Row-major ``[W | b]``.
    """
    net, lossfn, trace = prepare(model, x, y, loss)
    with torch.no_grad():
        return dense_blocks(net, trace, per_example_preactivation(net, trace, y, lossfn, hessian=True))


def expected_preactivation_gn(model: nn.Module, x: Tensor, y: Tensor, loss: "str | Loss") -> List[Tensor]:
    """The exact E[𝒢_λ] (d_λ, d_λ) per layer: what KFLR computes, here by brute force."""
    net, lossfn, trace = prepare(model, x, y, loss)
    with torch.no_grad():
        return [M.mean(0) for M in per_example_preactivation(net, trace, y, lossfn, hessian=False)]


def output_jacobian(model: nn.Module, net: Network, x: Tensor) -> Tensor:
    """J = ∂h_L/∂θ for every example: (N, K, P), θ in the project's flat order."""
    theta = flatten([layer_matrix(st).detach() for st in net.stages])

    def f(vec: Tensor) -> Tensor:
        return functional_call(model, param_dict(net, model, unflatten(net, vec)), (x,))

    return jacrev(f)(theta)


def gauss_newton_matrix(model: nn.Module, x: Tensor, y: Tensor, loss: "str | Loss") -> Tensor:
    """The full dense GN matrix (1/N) Σ_n J_nᵀ H_L J_n (eq. 12–13) by ``torch.func``: (P, P).

    For tiny nets; θ in the project's order (per layer row-major ``[W | b]``, forward order).
    """
    net, lossfn, trace = prepare(model, x, y, loss)
    J = output_jacobian(model, net, x)
    H = lossfn.psd_hessian(trace.output, y)
    return torch.einsum("nkp,nkl,nlq->pq", J, H, J) / x.shape[0]
