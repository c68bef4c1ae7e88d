"""KFLR: the exact E[𝒢_λ] through the square-root recursion, eq. (23)–(25).

With H_L = Σ_k c_k c_kᵀ per example (R = rank columns), C_λ^k = B_λ W_{λ+1}ᵀ C_{λ+1}^k and
E[𝒢_λ] = (1/N) Σ_k C̃_λ^k C̃_λ^kᵀ. Three things keep it fast and its memory bounded:

* the columns are back-propagated in chunks of ``chunk_size`` (≈ chunk·N·max d floats live);
* a diagonal square root (``mse``, ``bce``: H_L = diag(c²)) skips the product of one-hot
  columns with the top weight matrix: column k of example n becomes c_nk f'_nk W_k,: directly;
* rank compression: below a narrow layer of width d ≪ R (an autoencoder's code layer), the
  per-example 𝒢_λ has rank ≤ d, so the R columns are replaced by a d-column square root of
  the per-example Gram matrix (by ``eigh``), and the layers below cost d/R of the rest.
  This is exact (up to rounding).
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor

from ..layers import Network
from ..losses import Loss
from .recursion import SquareRoot
from .trace import Trace

DEFAULT_CHUNK_BYTES = 256 * 2**20
COMPRESS_MAX_WIDTH = 128  # batched eigh of (N, d, d) stays cheap up to here


def default_chunk(net: Network, n: int, itemsize: int) -> int:
    """Columns per chunk so that one (chunk, N, max d) block stays near 256 MB."""
    width = max(max(st.d_out, st.d_in) for st in net.stages)
    return max(1, DEFAULT_CHUNK_BYTES // max(1, n * width * itemsize))


def _compression_point(net: Network, pos: int, rank: int) -> Optional[int]:
    """The first stage (top-first position ≥ pos, not the first layer) narrow enough to compress."""
    order = list(reversed(net.stages))
    for j in range(pos, len(order) - 1):
        d = order[j].d_out
        if 2 * d <= rank and d <= COMPRESS_MAX_WIDTH:
            return j
    return None


def _psd_sqrt_batched(M: Tensor) -> Tensor:
    """S (N, d, d) with S Sᵀ = M for PSD M (N, d, d), by eigh in float64."""
    ev, U = torch.linalg.eigh(0.5 * (M + M.transpose(-1, -2)).double())
    return (U * ev.clamp(min=0).sqrt().unsqueeze(-2)).to(M.dtype)


def chunked_sqrt_backward(net: Network, trace: Trace, columns: Callable[[int, int], Tensor], rank: int,
                          scale: float, chunk_size: Optional[int], diagonal: Optional[Tensor] = None,
                          compress: bool = True) -> List[Tensor]:
    """Σ over chunks of the square-root recursion (eq. 24–25); ``columns(a, b)`` gives (b−a, N, K).

    ``diagonal`` (N, K): the square root is diag(diagonal_n) (then ``columns`` is unused for
    the top layer). ``scale`` multiplies every factor (1/S for KFAC). Returns the factors in
    forward order.
    """
    n = trace.output.shape[0]
    order = list(reversed(net.stages))
    d1s = [None if st.is_identity else st.derivatives(trace.preacts[st.index], a=trace.activation(st.index))[0]
           for st in order]
    weights = [st.linear.weight.detach() for st in order]
    G: List[Optional[Tensor]] = [None] * len(order)
    prop = SquareRoot(n, scale)

    def add(j: int, f: Tensor) -> None:
        G[j] = f if G[j] is None else G[j] + f  # type: ignore[operator]

    pos, entered = 0, False  # entered: the state at `pos` is already w.r.t. h (factor counted)
    src, R = columns, rank
    while True:
        end = _compression_point(net, pos, R) if compress else None
        chunk = chunk_size or default_chunk(net, n, trace.output.element_size())
        gram = None
        for a in range(0, R, chunk):
            b = min(R, a + chunk)
            j = pos
            if diagonal is not None and pos == 0 and not entered:
                e = diagonal if d1s[0] is None else diagonal * d1s[0]  # (N, K): top columns diag(e_n)
                if a == 0:
                    add(0, torch.diag((e * e).sum(0) * (scale / n)))
                if len(order) == 1:
                    break  # a single layer: its factor is all there is
                C = e[:, a:b].T.contiguous().unsqueeze(-1) * weights[0][a:b].unsqueeze(1)  # (b−a, N, d_in)
                j = 1
            else:
                C = src(a, b)
                if entered:
                    C = prop.linear(C, weights[pos])
                    j = pos + 1
            while True:
                C = prop.activation(C, d1s[j], None)
                if j == end:
                    g = torch.einsum("rni,rnj->nij", C, C) * scale
                    gram = g if gram is None else gram + g
                    break
                add(j, prop.factor(C))
                if j == len(order) - 1:
                    break
                C = prop.linear(C, weights[j])
                j += 1
        if end is None:
            break
        assert gram is not None
        m = gram.mean(0)
        add(end, 0.5 * (m + m.T))  # exactly symmetric, as every other factor (d ≤ COMPRESS_MAX_WIDTH)
        S = _psd_sqrt_batched(gram).permute(2, 0, 1)  # (d, N, d): new columns w.r.t. h_end
        src, R, pos, entered, scale, diagonal = (lambda a, b, S=S: S[a:b]), S.shape[0], end, True, 1.0, None
        prop = SquareRoot(n, 1.0)
    return [G[len(order) - 1 - st.index] for st in net.stages]  # type: ignore[misc]


def kflr_g(net: Network, trace: Trace, y: Tensor, loss: Loss, chunk_size: Optional[int] = None, *,
           reduce: Optional[Callable[[Tensor], Tensor]] = None) -> List[Tensor]:
    """The KFLR pre-activation factors G_λ = E[𝒢_λ] (exact), forward order.

    ``reduce``: data-parallel training (:mod:`gnopt.distributed`); G is a mean over
    examples, so the per-process factors are reduced once, at the end (coalesced).
    """
    h = trace.output
    with torch.no_grad():
        Gs = chunked_sqrt_backward(net, trace, lambda a, b: loss.sqrt_columns(h, y, a, b),
                                   loss.sqrt_rank(h), 1.0, chunk_size, diagonal=loss.sqrt_diagonal(h, y))
    if reduce is None:
        return Gs
    from ..distributed.comm import reduce_many

    return reduce_many(reduce, Gs)
