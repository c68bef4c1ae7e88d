"""KFRA: the recursive approximation of E[𝒢_λ], eq. (26) and Algorithm 1.

The expected pre-activation GN matrix is passed down whole:
E[𝒢_λ] ≈ (W_{λ+1}ᵀ E[𝒢_{λ+1}] W_{λ+1}) ⊙ (1/N) Σ_n f'(h_λ^n) f'(h_λ^n)ᵀ,
started from the exact E[𝒢_L] = (1/N) Σ_n B_L H_L B_L. Exact at batch size 1 and, with
linear transfer functions and a constant H_L (e.g. ``mse``), at any batch size.
Cost per layer: two (d×d)·(d×d') products and one Hadamard product (App. C.4).
"""

from __future__ import annotations

from typing import Callable, List, Optional

from torch import Tensor

from ..layers import Network
from ..losses import Loss
from .recursion import Expected, backward
from .trace import Trace


def kfra_g(net: Network, trace: Trace, y: Tensor, loss: Loss, *,
           reduce: Optional[Callable[[Tensor], Tensor]] = None) -> List[Tensor]:
    """The KFRA pre-activation factors G_λ (d_λ, d_λ), forward order.

    ``reduce``: data-parallel training (:mod:`gnopt.distributed`); the batch means of the
    recursion are reduced at every layer (one collective per layer), see :class:`Expected`.
    """
    h = trace.output
    # The top stage's activation maps the model output back to h_L; its f' enters exactly.
    return backward(net, trace, None, Expected(lambda d1: loss.mean_gn_top(h, y, d1), reduce=reduce))
