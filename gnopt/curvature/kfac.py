"""KFAC: the Monte-Carlo Fisher estimate of E[𝒢_λ], App. C.3 (eq. 59).

For S targets ŷ_s ~ p_θ(y|x) per example, the gradients g_s = ∂E(h, ŷ_s)/∂h_L are
back-propagated like KFLR's square-root columns, and E[𝒢_λ] ≈ (1/(N S)) Σ_{n,s} g gᵀ at
h_λ. For exponential-family losses its expectation over the samples is KFLR (App. C.2);
for the mixture of eq. (27) it estimates the Fisher, which differs from the GN.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ..layers import Network
from ..losses import Loss
from .kflr import chunked_sqrt_backward
from .trace import Trace


def kfac_g(net: Network, trace: Trace, loss: Loss, samples: int = 1, generator: Optional[torch.Generator] = None,
           chunk_size: Optional[int] = None) -> List[Tensor]:
    """The KFAC pre-activation factors G_λ, forward order. Rank ≤ S·N (App. D)."""
    with torch.no_grad():
        g = loss.sample_grads(trace.output, samples, generator)  # (S, N, K)
    return chunked_sqrt_backward(net, trace, lambda a, b: g[a:b], samples, 1.0 / samples, chunk_size)
