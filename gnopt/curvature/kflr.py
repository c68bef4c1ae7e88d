"""KFLR: the exact E[𝒢_λ] through the square-root recursion, eq. (23)–(25).

With H_L = Σ_k c_k c_kᵀ per example (R = rank columns), C_λ^k = B_λ W_{λ+1}ᵀ C_{λ+1}^k and
E[𝒢_λ] = (1/N) Σ_k C̃_λ^k C̃_λ^kᵀ. The columns are back-propagated in chunks of
``chunk_size`` so that memory stays bounded (≈ chunk·N·max d floats), whatever R is.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor

from ..layers import Network
from ..losses import Loss
from .recursion import SquareRoot, backward
from .trace import Trace

DEFAULT_CHUNK_BYTES = 256 * 2**20


def default_chunk(net: Network, n: int, itemsize: int) -> int:
    """Columns per chunk so that one (chunk, N, max d) block stays near 256 MB."""
    width = max(max(st.d_out, st.d_in) for st in net.stages)
    return max(1, DEFAULT_CHUNK_BYTES // max(1, n * width * itemsize))


def chunked_sqrt_backward(net: Network, trace: Trace, columns: Callable[[int, int], Tensor], rank: int,
                          scale: float, chunk_size: Optional[int]) -> List[Tensor]:
    """Σ over chunks of the SquareRoot recursion; ``columns(a, b)`` gives (b−a, N, K)."""
    n = trace.output.shape[0]
    chunk = chunk_size or default_chunk(net, n, trace.output.element_size())
    total: Optional[List[Tensor]] = None
    prop = SquareRoot(n, scale)
    for start in range(0, rank, chunk):
        part = backward(net, trace, columns(start, min(rank, start + chunk)), prop)
        total = part if total is None else [t + p for t, p in zip(total, part)]
    assert total is not None
    return total


def kflr_g(net: Network, trace: Trace, y: Tensor, loss: Loss, chunk_size: Optional[int] = None) -> List[Tensor]:
    """The KFLR pre-activation factors G_λ = E[𝒢_λ] (exact), forward order."""
    h = trace.output
    with torch.no_grad():
        return chunked_sqrt_backward(net, trace, lambda a, b: loss.sqrt_columns(h, y, a, b),
                                     loss.sqrt_rank(h), 1.0, chunk_size)
