"""Kronecker factors per layer and the front door :func:`kronecker_factors`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..layers import Network
from ..losses import Loss
from .common import prepare
from .trace import Trace, activation_factor


@dataclass(frozen=True)
class KroneckerFactors:
    """One layer's factors: ``torch.kron(G, Q)`` approximates its GN block (eq. 20).

    ``Q``: (d_in+1, d_in+1) with the bias as the last coordinate, or (d_in, d_in) without
    bias (eq. 21). ``G``: (d_out, d_out), the approximation of E[𝒢_λ]. In the paper's
    column-stacking order the same matrix is ``Q ⊗ G``; here parameters are row-major.
    """

    Q: Tensor
    G: Tensor

    def dense(self) -> Tensor:
        """The Kronecker block kron(G, Q), (d_out·d_in', d_out·d_in'). Small layers only."""
        return torch.kron(self.G, self.Q)


METHODS = ("kfra", "kflr", "kfac")


def factors_from_trace(net: Network, trace: Trace, y: Tensor, loss: Loss, method: str, samples: int = 1,
                       generator: Optional[torch.Generator] = None,
                       chunk_size: Optional[int] = None, *, reduce: Optional[Callable[[Tensor], Tensor]] = None,
                       global_rows: Optional[Tuple[int, int]] = None) -> List[KroneckerFactors]:
    """Factors of every layer from a (detached) forward trace; see :func:`kronecker_factors`.

    Data-parallel training (:mod:`gnopt.distributed`): ``reduce`` maps a per-process mean
    over examples to the global mean. Q and (KFLR, KFAC) G are sums over examples and are
    reduced together at the end, in one coalesced collective; KFRA reduces inside its
    recursion (eq. 26 is not linear in the batch). ``global_rows``: see
    :func:`~gnopt.curvature.kfac.kfac_g`. ``None`` (one process) changes nothing.
    """
    from .kfac import kfac_g
    from .kflr import kflr_g
    from .kfra import kfra_g

    if method == "kfra":
        Gs = kfra_g(net, trace, y, loss, reduce=reduce)
    elif method == "kflr":
        Gs = kflr_g(net, trace, y, loss, chunk_size=chunk_size)
    elif method == "kfac":
        Gs = kfac_g(net, trace, loss, samples=samples, generator=generator, chunk_size=chunk_size,
                    global_rows=global_rows)
    else:
        raise ValueError(f"unknown curvature method {method!r}; use one of {METHODS}")
    Qs = [activation_factor(trace.inputs[st.index], st.has_bias) for st in net.stages]
    if reduce is not None:
        from ..distributed.comm import reduce_many

        if method == "kfra":
            Qs = reduce_many(reduce, Qs)
        else:
            both = reduce_many(reduce, Qs + list(Gs))
            Qs, Gs = both[:len(Qs)], both[len(Qs):]
    if reduce is None:  # every recursion gives G exactly symmetric (Expected; SquareRoot's symmetric products)
        return [KroneckerFactors(Q, G) for Q, G in zip(Qs, Gs)]
    return [KroneckerFactors(Q, 0.5 * (G + G.T)) for Q, G in zip(Qs, Gs)]


def kronecker_factors(model: nn.Module, x: Tensor, y: Tensor, loss: "str | Loss", method: str = "kfra", *,
                      samples: int = 1, generator: Optional[torch.Generator] = None,
                      chunk_size: Optional[int] = None) -> List[KroneckerFactors]:
    """The Kronecker factors ``(Q, G)`` of every ``nn.Linear`` of ``model``, in forward order.

    Args:
        model: ``nn.Sequential`` of ``nn.Linear`` and registered transfer functions.
        x: inputs (N, D). y: targets as the loss needs them.
        loss: ``"mse"``, ``"bce"``, ``"ce"``, ``"mixture"`` or a :class:`gnopt.Loss`.
        method: ``"kfra"`` (eq. 26, Algorithm 1), ``"kflr"`` (eq. 23–25, exact E[𝒢] of the
            output layer's square root propagated per example) or ``"kfac"`` (App. C.3:
            gradients at targets sampled from the model, ``samples`` per example).
        generator: a ``torch.Generator`` for reproducible KFAC samples.
        chunk_size: square-root columns back-propagated at a time (KFLR/KFAC); by default
            chosen to keep the working set near 256 MB.

    Returns:
        A list of :class:`KroneckerFactors`; ``torch.kron(G, Q)`` approximates the layer's
        block of the batch-mean Gauss-Newton matrix (eq. 13) in row-major ``[W | b]`` order.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1; got {samples}")
    net, lossfn, trace = prepare(model, x, y, loss)
    with torch.no_grad():
        return factors_from_trace(net, trace, y, lossfn, method, samples, generator, chunk_size)
