"""Cheap, exact checks and reductions used on every optimiser step.

``all_finite`` is the hot-path test behind gnopt's "never NaN in the parameters" promise.
``torch.isfinite(t).all()`` allocates a boolean tensor of t's size and makes three passes;
instead we sum each tensor once: NaN and ±Inf propagate through a sum (Inf − Inf = NaN),
so a finite sum proves that every element is finite. Only when the sum is not finite
(a non-finite element, or — for huge finite values — an overflowing sum) do we fall back
to the exact element-wise test, so the answer is always exact.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor


def all_finite(*tensors: "Tensor | Iterable[Tensor]") -> bool:
    """True iff every element of every tensor (or sequence of tensors) is finite.

    One summation pass per tensor (one host synchronisation for the whole call on a GPU);
    exact: falls back to ``torch.isfinite(t).all()`` when a sum is not finite.
    """
    flat = []
    for t in tensors:
        if isinstance(t, Tensor):
            flat.append(t)
        else:
            flat.extend(t)
    if any(t.is_complex() for t in flat):  # a real sum would drop the imaginary parts
        return all(bool(torch.isfinite(t).all()) for t in flat)
    return all_finite_made(lambda: flat)


def all_finite_made(make: Callable[[], Iterable[Tensor]]) -> bool:
    """:func:`all_finite` of the tensors that ``make()`` yields, consumed one at a time (so
    that tensors made on the fly — e.g. θ + αδ per parameter — are never alive together).

    One summation per tensor and one host synchronisation; ``make`` is called a second time
    only for the exact element-wise test, when the sums are not finite.
    """
    sums = [sum64(t) for t in make() if t.numel() and t.is_floating_point()]  # integers are always finite
    if not sums or math.isfinite(float(torch.stack(sums).sum())):
        return True
    return all(bool(torch.isfinite(t).all()) for t in make() if t.is_floating_point())


def sum64(t: Tensor) -> Tensor:
    """The sum of ``t``'s elements as a float64 scalar tensor, on ``t``'s device (no host
    synchronisation); non-finite iff an element is non-finite or the sum overflows."""
    return t.sum(dtype=torch.float64 if t.dtype == torch.float64 else None).to(torch.float64)


def norm(ts: Sequence[Tensor]) -> float:
    """‖(t_1, …, t_k)‖₂ of a list of tensors: per-tensor norms in the tensors' dtype (pairwise
    summation, relative error ~1e-7 in float32), combined in float64; one host sync."""
    if not ts:
        return 0.0
    sq = torch.stack([torch.linalg.vector_norm(t).to(torch.float64) ** 2 for t in ts])
    return math.sqrt(float(sq.sum()))


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Σ_i ⟨a_i, b_i⟩ as a float64 scalar tensor (per-tensor dot products in the tensors'
    dtype by BLAS, combined in float64)."""
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)).to(torch.float64) for x, y in zip(a, b)]).sum()


def is_diagonal(A: Tensor) -> bool:
    """Whether a square ``(n, n)`` matrix has exactly zero off-diagonal entries.

    Reads the off-diagonal entries through a view (no copy): the top factor ``G_L = E[H_L]``
    of KFRA/KFLR is exactly diagonal for element-wise losses (``mse``, ``bce``).  Batched
    or non-contiguous matrices answer ``False`` (they take the dense path).
    """
    if A.dim() != 2 or A.shape[0] != A.shape[1] or not A.is_contiguous():
        return False
    n = A.shape[0]
    if n < 2:
        return True
    if bool(A[1, 0] != 0) or bool(A[0, n - 1] != 0):  # a dense factor is rejected at once
        return False
    off = A.reshape(-1)[1:].view(n - 1, n + 1)[:, :n]  # row i: the n entries after A[i, i]
    return not bool(off.any())


@contextlib.contextmanager
def matmul_precision(value: Optional[str]) -> Iterator[None]:
    """:func:`torch.set_float32_matmul_precision` ``value`` inside the block (``None``: leave it),
    the previous setting restored on exit — torch's setting is process-wide."""
    previous = torch.get_float32_matmul_precision()
    if value:
        torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
