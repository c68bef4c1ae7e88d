"""Gauss-Newton-vector products by the R-operator (Pearlmutter 1994; Schraudolph 2002).

With the forward trace of a batch stored, a direction V = (V_1..V_L) (per-layer matrices
in the ``[W | b]`` layout) is pushed forward (one forward-mode pass, reusing the stored
activations; no second forward of the network):

    R(h_λ) = V_λ ā_{λ-1} + W_λ R(a_{λ-1}),   R(a_λ) = f'(h_λ) ⊙ R(h_λ),

giving J v at the output. Then

* ``vᵀ Ḡ v = (1/N) Σ_n (J v)_nᵀ H_L (J v)_n`` — the curvature term of the step size (eq. 41);
* ``Ḡ v = (1/N) Σ_n J_nᵀ H_L (J v)_n`` — one reverse pass of ``H_L J v`` (Hessian-free, App. F.2).

Both are pure functions of the trace. The full-model convenience wrappers
(:func:`gn_vector_product`, :func:`gn_quadratic`) run the forward pass first.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .curvature.common import prepare
from .curvature.trace import Trace, augmented
from .layers import Network
from .losses import Loss


def _d1(st, trace: Trace) -> Tensor:
    return st.derivatives(trace.preacts[st.index], a=trace.activation(st.index))[0]


def jvp_from_trace(net: Network, trace: Trace, vecs: Sequence[Tensor]) -> Tensor:
    """J v: the output tangent (N, K) for per-layer directions ``vecs`` ((d_out, d_in') each)."""
    ra = None
    for st in net.stages:
        a = trace.inputs[st.index]
        V = vecs[st.index]
        if st.has_bias:
            rh = torch.addmm(V[:, -1], a, V[:, : st.d_in].T)
        else:
            rh = a @ V.T
        if ra is not None:
            rh = rh.addmm_(ra, st.linear.weight.detach().T)
        ra = rh if st.is_identity else rh.mul_(_d1(st, trace))
    assert ra is not None
    return ra


def vjp_from_trace(net: Network, trace: Trace, u: Tensor) -> List[Tensor]:
    """Jᵀ u summed over the batch: per-layer (d_out, d_in') matrices for output cotangents u (N, K)."""
    out: List[Tensor] = [torch.empty(0)] * len(net.stages)
    ga = u
    for st in reversed(net.stages):
        gh = ga if st.is_identity else ga * _d1(st, trace)
        out[st.index] = gh.T @ augmented(trace.inputs[st.index], st.has_bias)
        if st.index > 0:
            ga = gh @ st.linear.weight.detach()
    return out


def quadratic_from_trace(net: Network, trace: Trace, y: Tensor, loss: Loss, vecs: Sequence[Tensor], *,
                         reduce: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """vᵀ Ḡ v for the batch-mean GN matrix (eq. 41's first term), a scalar tensor.

    ``reduce``: data-parallel training (:mod:`gnopt.distributed`), the global mean over
    examples of this process's mean; ``None`` for one process.
    """
    jv = jvp_from_trace(net, trace, vecs)
    q = (jv * loss.hessian_vp(trace.output, y, jv)).sum() / jv.shape[0]
    return q if reduce is None else reduce(q)


def quadratic_and_slope_from_trace(net: Network, trace: Trace, y: Tensor, loss: Loss,
                                   vecs: Sequence[Tensor]) -> "tuple[Tensor, Tensor]":
    """(vᵀḠv, vᵀ∇L) for the batch mean L = (1/N) Σ ℓ_n, from the same forward-mode product:
    the slope is (1/N) Σ_n ∇_h ℓ_nᵀ (J v)_n, so that the quadratic model of eq. (39) on these
    rows costs nothing beyond its curvature term. Scalar tensors."""
    jv = jvp_from_trace(net, trace, vecs)
    n = jv.shape[0]
    q = (jv * loss.hessian_vp(trace.output, y, jv)).sum() / n
    s = (jv * loss.grad(trace.output, y)).sum() / n
    return q, s


def gvp_from_trace(net: Network, trace: Trace, y: Tensor, loss: Loss, vecs: Sequence[Tensor], *,
                   reduce: Optional[Callable[[Tensor], Tensor]] = None) -> List[Tensor]:
    """Ḡ v = (1/N) Σ J_nᵀ H_L J_n v, per layer (``reduce``: as :func:`quadratic_from_trace`,
    one coalesced collective)."""
    jv = jvp_from_trace(net, trace, vecs)
    out = vjp_from_trace(net, trace, loss.hessian_vp(trace.output, y, jv) / jv.shape[0])
    if reduce is None:
        return out
    from .distributed.comm import reduce_many

    return reduce_many(reduce, out)


def gn_vector_product(model: nn.Module, x: Tensor, y: Tensor, loss: "str | Loss", vecs: Sequence[Tensor]) -> List[Tensor]:
    """Ḡ v for the batch (x, y); ``vecs`` and the result are per-layer ``[W | b]`` matrices."""
    net, lossfn, trace = prepare(model, x, y, loss)
    with torch.no_grad():
        return gvp_from_trace(net, trace, y, lossfn, vecs)


def gn_quadratic(model: nn.Module, x: Tensor, y: Tensor, loss: "str | Loss", vecs: Sequence[Tensor]) -> Tensor:
    """vᵀ Ḡ v for the batch (x, y) by one forward-mode product."""
    net, lossfn, trace = prepare(model, x, y, loss)
    with torch.no_grad():
        return quadratic_from_trace(net, trace, y, lossfn, vecs)
