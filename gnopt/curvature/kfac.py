"""KFAC: the Monte-Carlo Fisher estimate of E[𝒢_λ], App. C.3 (eq. 59).

For S targets ŷ_s ~ p_θ(y|x) per example, the gradients g_s = ∂E(h, ŷ_s)/∂h_L are
back-propagated like KFLR's square-root columns, and E[𝒢_λ] ≈ (1/(N S)) Σ_{n,s} g gᵀ at
h_λ. For exponential-family losses its expectation over the samples is KFLR (App. C.2);
for the mixture of eq. (27) it estimates the Fisher, which differs from the GN.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from ..layers import Network
from ..losses import Loss
from .kflr import chunked_sqrt_backward
from .trace import Trace


def kfac_g(net: Network, trace: Trace, loss: Loss, samples: int = 1, generator: Optional[torch.Generator] = None,
           chunk_size: Optional[int] = None, *, reduce: Optional[Callable[[Tensor], Tensor]] = None,
           global_rows: Optional[Tuple[int, int]] = None) -> List[Tensor]:
    """The KFAC pre-activation factors G_λ, forward order. Rank ≤ S·N (App. D).

    Data-parallel training (:mod:`gnopt.distributed`): ``global_rows = (offset, total)``
    says that this batch is rows ``offset:offset+N`` of a global batch of ``total`` rows.
    The targets are then drawn for the whole global batch (the model outputs of the other
    rows are stand-in zeros: the samplers are elementwise, so a row's draw depends only on
    its own output and its position in the generator's stream) and this process keeps its
    rows. With the same generator state on every process, the samples are exactly those of
    one process on the global batch, at the cost of drawing S·total·K numbers.
    ``reduce`` reduces the factors at the end (coalesced).
    """
    with torch.no_grad():
        h = trace.output
        if global_rows is None:
            g = loss.sample_grads(h, samples, generator)  # (S, N, K)
        else:
            off, total = global_rows
            full = h.new_zeros((total,) + tuple(h.shape[1:]))
            full[off:off + h.shape[0]] = h
            g = loss.sample_grads(full, samples, generator)[:, off:off + h.shape[0]]
    Gs = chunked_sqrt_backward(net, trace, lambda a, b: g[a:b], samples, 1.0 / samples, chunk_size)
    if reduce is None:
        return Gs
    from ..distributed.comm import reduce_many

    return reduce_many(reduce, Gs)
