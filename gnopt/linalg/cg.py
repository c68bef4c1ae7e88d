"""(Preconditioned) conjugate gradients on flat tensors or lists of tensors.

Solves ``A x = b`` for a symmetric positive (semi-)definite operator given only through
``matvec`` — e.g. a damped Gauss-Newton-vector product ``(Ḡ + (τ + η) I) v`` for the
Hessian-free method (Martens 2010; paper Appendix B, ``C̄``) or a per-layer block for the
alignment analysis (Appendix F).  ``b`` may be a single tensor of any shape or a list/tuple
of tensors (one per layer); ``matvec`` and ``preconditioner`` must accept and return the
same structure.  Inner products are sums over all entries of all tensors.

Stopping rules, checked after every iteration:

* relative residual ``‖r_i‖ <= max(tol·‖b‖, atol)`` (``r_i`` is the recursively updated
  residual ``b − A x_i``) → ``reason="converged"``;
* optional relative-progress rule of Martens (2010, §4.4) on the quadratic
  ``φ(x) = ½ xᵀAx − bᵀx = −½ xᵀ(r + b)``: with ``w = max(progress_window, ⌈0.1 i⌉)``, stop at
  iteration ``i > w`` when ``φ_i < 0`` and ``(φ_i − φ_{i−w}) / φ_i < w · progress_tol``
  (Martens uses ``progress_tol = 5e-4``, window 10) → ``reason="progress"``;
* ``max_iter`` iterations → ``reason="max_iter"``;
* non-positive curvature ``pᵀAp <= 0`` → stop *before* stepping along ``p``,
  ``reason="negative_curvature"`` (``A`` is not PD along ``p``);
* non-finite values (NaN/Inf in ``pᵀAp``, the iterate or the residual) → the last finite
  iterate is returned, ``reason="non_finite"``; never a NaN;
* a preconditioner with ``rᵀM⁻¹r <= 0`` or non-finite → ``reason="bad_preconditioner"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence, TypeVar, Union

import torch
from torch import Tensor

from ..numerics import all_finite

__all__ = ["CGInfo", "conjugate_gradient"]

TensorOrList = Union[Tensor, Sequence[Tensor]]
T = TypeVar("T", Tensor, Sequence[Tensor])

CGReason = Literal[
    "converged", "progress", "max_iter", "negative_curvature", "non_finite", "bad_preconditioner"
]


@dataclass(frozen=True)
class CGInfo:
    """Outcome of :func:`conjugate_gradient`.

    Attributes:
        iterations: number of completed CG steps (matvecs along search directions).
        residual_norm: ``‖b − A x‖`` of the returned ``x`` (recursive residual).
        converged: ``True`` iff a requested stopping rule was met (``reason`` is
            ``"converged"`` or ``"progress"``).
        reason: why CG stopped (see module docstring).
        initial_residual_norm: ``‖b − A x0‖``.
        quadratic_value: ``φ(x) = ½ xᵀAx − bᵀx`` at the returned ``x``.
    """

    iterations: int
    residual_norm: float
    converged: bool
    reason: CGReason
    initial_residual_norm: float
    quadratic_value: float


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((ai * bi).sum() for ai, bi in zip(a, b)))


def _axpy(alpha: float, x: list[Tensor], y: list[Tensor]) -> list[Tensor]:
    """``y + alpha x``."""
    return [yi + alpha * xi for xi, yi in zip(x, y)]


def _finite(xs: list[Tensor]) -> bool:
    return all_finite(xs)


def conjugate_gradient(
    matvec: Callable[[T], T],
    b: T,
    x0: T | None = None,
    *,
    tol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int | None = None,
    preconditioner: Callable[[T], T] | None = None,
    progress_tol: float | None = None,
    progress_window: int = 10,
) -> tuple[T, CGInfo]:
    """Preconditioned conjugate gradients for ``A x = b`` with ``A`` symmetric PD.

    Args:
        matvec: ``v -> A v``; same structure (tensor or list of tensors) in and out.
        b: right-hand side, a tensor of any shape or a list/tuple of tensors.
        x0: initial guess (same structure as ``b``); default zeros.  Must be finite.
        tol: relative residual tolerance, stop when ``‖r‖ <= max(tol·‖b‖, atol)``.
        atol: absolute residual tolerance.
        max_iter: maximum CG iterations; default ``10 ×`` the total number of entries of
            ``b`` (as SciPy; in floating point CG often needs more than ``n`` steps).
        preconditioner: ``r -> M⁻¹ r`` for an SPD ``M`` (e.g. a damped Kronecker solve).
        progress_tol: enables Martens' (2010) relative-progress stopping rule with this
            ``ε`` (he uses ``5e-4``); ``None`` disables it.
        progress_window: minimum window ``w`` of that rule (Martens: 10).

    Returns:
        ``(x, info)`` with ``x`` of the structure of ``b`` (a list for list/tuple input)
        and finite, and ``info`` a :class:`CGInfo`.
    """
    is_tensor = isinstance(b, Tensor)
    bl: list[Tensor] = [b] if is_tensor else list(b)
    if not bl:
        raise ValueError("b must be a tensor or a non-empty sequence of tensors")

    def wrap(xs: list[Tensor]):
        return xs[0] if is_tensor else list(xs)

    def unwrap(v, what: str) -> list[Tensor]:
        out = [v] if is_tensor else list(v)
        if len(out) != len(bl) or any(o.shape != bi.shape for o, bi in zip(out, bl)):
            raise ValueError(f"{what} returned a structure/shapes different from b")
        return out

    def A(xs: list[Tensor]) -> list[Tensor]:
        return unwrap(matvec(wrap(xs)), "matvec")

    def M(xs: list[Tensor]) -> list[Tensor]:
        if preconditioner is None:
            return xs
        return unwrap(preconditioner(wrap(xs)), "preconditioner")

    if max_iter is None:
        max_iter = 10 * sum(bi.numel() for bi in bl)
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")

    if x0 is None:
        x = [torch.zeros_like(bi) for bi in bl]
    else:
        x = unwrap(x0, "x0")
        if not _finite(x):
            raise ValueError("x0 must be finite")
        x = [xi.to(bi.dtype) for xi, bi in zip(x, bl)]

    def quad(xs: list[Tensor], rs: list[Tensor]) -> float:
        # φ(x) = ½ xᵀAx − bᵀx = −½ xᵀ(r + b) with r = b − A x
        return -0.5 * _dot(xs, [ri + bi for ri, bi in zip(rs, bl)])

    def done(reason: CGReason, it: int, r: list[Tensor] | None, r0n: float):
        if r is None:  # residual unknown/non-finite: report it as such
            rn, phi = math.inf, math.nan
        else:
            rn, phi = math.sqrt(max(_dot(r, r), 0.0)), quad(x, r)
        info = CGInfo(
            iterations=it,
            residual_norm=rn,
            converged=reason in ("converged", "progress"),
            reason=reason,
            initial_residual_norm=r0n,
            quadratic_value=phi,
        )
        return wrap(x), info

    bnorm = math.sqrt(_dot(bl, bl))
    if not math.isfinite(bnorm) or not _finite(bl):
        return done("non_finite", 0, None, math.inf)

    if x0 is None:
        r = list(bl)
    else:
        Ax = A(x)
        r = [bi - ai for bi, ai in zip(bl, Ax)]
        if not _finite(r):
            return done("non_finite", 0, None, math.inf)
    rnorm = math.sqrt(_dot(r, r))
    r0norm = rnorm
    threshold = max(tol * bnorm, atol)
    if rnorm <= threshold:
        return done("converged", 0, r, r0norm)

    z = M(r)
    rz = _dot(r, z)
    if not math.isfinite(rz) or rz <= 0.0:
        return done("bad_preconditioner", 0, r, r0norm)
    p = z
    phis: list[float] = [quad(x, r)]
    for i in range(max_iter):
        Ap = A(p)
        pAp = _dot(p, Ap)
        if not math.isfinite(pAp):
            return done("non_finite", i, r, r0norm)
        if pAp <= 0.0:
            return done("negative_curvature", i, r, r0norm)
        alpha = rz / pAp
        x_new = _axpy(alpha, p, x)
        r_new = _axpy(-alpha, Ap, r)
        if not (_finite(x_new) and _finite(r_new)):
            return done("non_finite", i, r, r0norm)
        x, r = x_new, r_new
        it = i + 1
        rnorm = math.sqrt(_dot(r, r))
        if rnorm <= threshold:
            return done("converged", it, r, r0norm)
        if progress_tol is not None:
            phis.append(quad(x, r))
            w = max(progress_window, math.ceil(0.1 * it))
            if it > w and phis[it] < 0.0 and (phis[it] - phis[it - w]) / phis[it] < w * progress_tol:
                return done("progress", it, r, r0norm)
        z = M(r)
        rz_new = _dot(r, z)
        if not math.isfinite(rz_new) or rz_new <= 0.0:
            return done("bad_preconditioner", it, r, r0norm)
        beta = rz_new / rz
        p = _axpy(beta, p, z)
        rz = rz_new
    return done("max_iter", max_iter, r, r0norm)
