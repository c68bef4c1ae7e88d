"""Damped Kronecker-factored solves: the per-layer step direction of eq. 33–35.

For one layer with parameter matrix ``V`` of shape ``(d_out, d_in')`` (row-major
flattening, see :mod:`gnopt.linalg.kron`) and damping ``k = γ + η > 0`` we need (eq. 34–35)::

    (kron(G, Q) + k I) vec_r(X) = vec_r(V)

Two methods are provided.

``eigen`` (exact; Martens & Grosse 2015)
    With ``G = U_G diag(s) U_G^T`` and ``Q = U_Q diag(t) U_Q^T``::

        X = U_G [ (U_G^T V U_Q) / (s t^T + k) ] U_Q^T

    The decomposition does not depend on ``k``, so :class:`EigenFactors` can be reused for
    several damping values (the greedy γ search) and across steps.

``factored`` (approximate; eq. 36–38)
    ``Q ⊗ G + k I ≈ (Q + ω√k I) ⊗ (G + ω⁻¹√k I)``, i.e. in row-major order
    ``kron(G + (√k/ω) I, Q + ω√k I)``, whose inverse is applied as
    ``X = (G + (√k/ω) I)⁻¹ V (Q + ω√k I)⁻¹``.  With the trace norm in eq. 38,
    ``‖Q ⊗ I_G‖ = tr(Q)·d_G`` and ``‖I_Q ⊗ G‖ = d_Q·tr(G)``, hence::

        ω² = (tr(Q)/d_Q) / (tr(G)/d_G)            (ratio of mean traces)

    This ω minimises the bound of eq. 37, ``ω⁻¹√k‖Q⊗I‖ + ω√k‖I⊗G‖``; for PSD factors that
    bound *equals* the trace norm of the residual ``R(ω)`` (a sum of two PSD matrices), so ω
    minimises the residual's trace norm itself.  If either mean trace is zero (or not
    finite) — e.g. a layer whose ``G`` is exactly 0 — we define ``ω = 1``.

Numerics
    * Factors containing NaN/Inf raise :class:`LinalgFailure` immediately (no retry can fix
      them); so does a right-hand side ``V`` with non-finite entries.
    * Factors are symmetrised for ``eigh`` (and the PSD projection); Cholesky reads only
      the lower triangle.  Eigenvalues from ``eigh`` are clamped to ``>= 0`` (the factors
      are PSD in theory).  Exactly diagonal factors (the top ``G`` of KFRA/KFLR for ``mse``
      and ``bce``) are inverted element-wise when explicit inverses are requested.
      Exactly singular factors are fine since ``k > 0``.
    * A failed ``eigh``/Cholesky (a ``torch.linalg`` error or non-finite output) is retried
      in float64, then (Cholesky) on the PSD projection of the factors, then with damping
      multiplied by ``growth`` (default 10) up to ``max_retries`` (default 3) times.  Each
      fallback emits a :class:`LinalgFallbackWarning`.  If everything fails,
      :class:`LinalgFailure` is raised; NaN is never returned.
    * Results are returned in the dtype of ``V`` even when computed in float64.

All factor tensors may carry leading batch dimensions (``(..., n, n)``), which broadcast
against the batch dimensions of ``V``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..numerics import all_finite, is_diagonal

__all__ = [
    "LinalgFailure",
    "LinalgFallbackWarning",
    "EigenFactors",
    "FactoredFactors",
    "damped_kron_solve",
    "damped_kron_matvec",
    "factored_omega",
    "mean_trace",
]

DEFAULT_GROWTH = 10.0
DEFAULT_MAX_RETRIES = 3


class LinalgFailure(RuntimeError):
    """A damped Kronecker solve could not produce a finite result despite all fallbacks."""


class LinalgFallbackWarning(RuntimeWarning):
    """A decomposition or solve needed a fallback (float64, PSD projection, more damping)."""


# ----------------------------------------------------------------------------- helpers


def _check_damping(damping: float | Tensor) -> float:
    k = float(damping)
    if not math.isfinite(k) or k <= 0.0:
        raise ValueError(f"damping k = γ + η must be finite and > 0, got {k!r}")
    return k


def _check_factor(A: Tensor, name: str, finite: bool = True) -> None:
    """Shape and dtype of a factor; ``finite``: also that every entry is finite."""
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"factor {name} must be square (..., n, n), got shape {tuple(A.shape)}")
    if not A.is_floating_point():
        raise TypeError(f"factor {name} must be a floating-point tensor, got {A.dtype}")
    if finite and not all_finite(A):
        raise LinalgFailure(
            f"Kronecker factor {name} (shape {tuple(A.shape)}) contains NaN or Inf; "
            "the curvature estimate is corrupt and no damping can repair it"
        )


def _check_rhs(V: Tensor, G: Tensor, Q: Tensor, finite: bool = True) -> None:
    if V.dim() < 2 or V.shape[-2] != G.shape[-1] or V.shape[-1] != Q.shape[-1]:
        raise ValueError(
            f"shape mismatch: G {tuple(G.shape)}, Q {tuple(Q.shape)}, V {tuple(V.shape)}; "
            "expected V of shape (..., d_out, d_in') with G (d_out, d_out), Q (d_in', d_in')"
        )
    if finite and not all_finite(V):
        raise LinalgFailure(
            f"right-hand side V (shape {tuple(V.shape)}) contains NaN or Inf; refusing to solve"
        )


def _sym(A: Tensor) -> Tensor:
    return 0.5 * (A + A.mT)


def _shifted(A: Tensor, c: Tensor) -> Tensor:
    """``A + c I`` in one new tensor; ``c`` broadcasts over A's batch shape (``(..., 1, 1)``)."""
    out = A.clone()
    out.diagonal(dim1=-2, dim2=-1).add_(c[..., 0])
    return out


def _eye_like(A: Tensor) -> Tensor:
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def _finite(*ts: Tensor) -> bool:
    return all_finite(*ts)


def _warn(msg: str) -> None:
    warnings.warn(msg, LinalgFallbackWarning, stacklevel=3)


def mean_trace(A: Tensor) -> Tensor:
    """``tr(A) / dim(A)`` over the last two dims: ``(..., n, n) -> (...)``."""
    return A.diagonal(dim1=-2, dim2=-1).sum(-1) / A.shape[-1]


def factored_omega(G: Tensor, Q: Tensor) -> Tensor:
    """ω of eq. 38 with the trace norm: ``ω = sqrt((tr(Q)/d_Q) / (tr(G)/d_G))``.

    Q receives ``+ ω√k`` and G receives ``+ √k/ω`` (eq. 36).  Returns a tensor of the
    broadcast batch shape of ``G`` and ``Q`` (0-dim for plain matrices).  If either mean
    trace is ``<= 0`` or not finite (e.g. ``G == 0``) the ratio is undefined and ``ω = 1``.

    Args:
        G: ``(..., d_out, d_out)`` PSD factor.
        Q: ``(..., d_in', d_in')`` PSD factor.
    """
    mq = mean_trace(Q)
    mg = mean_trace(G)
    mq, mg = torch.broadcast_tensors(mq, mg)
    ok = (mq > 0) & (mg > 0) & torch.isfinite(mq) & torch.isfinite(mg)
    one = torch.ones_like(mq)
    ratio = torch.where(ok, mq, one) / torch.where(ok, mg, one)
    omega = torch.sqrt(ratio)
    ok = ok & torch.isfinite(omega) & (omega > 0)
    return torch.where(ok, omega, one)


def damped_kron_matvec(G: Tensor, Q: Tensor, V: Tensor, damping: float | Tensor) -> Tensor:
    """The damped block of eq. 35 applied to ``V``: ``G @ V @ Q + k V``.

    Equals ``unvec_r((kron(G, Q) + k I) @ vec_r(V))``; shapes as in
    :func:`gnopt.linalg.kron.kron_matvec`.
    """
    return G @ V @ Q + float(damping) * V


# ----------------------------------------------------------------------------- eigen


def _safe_eigh(A: Tensor, name: str, max_retries: int) -> tuple[Tensor, Tensor]:
    """Eigendecomposition ``A = U diag(w) U^T`` with clamped ``w >= 0`` and fallbacks.

    Attempts: native dtype; float64; float64 of ``A + c I`` with a growing shift ``c``
    (eigenvectors are shift-invariant, ``c`` is subtracted back before clamping).
    """
    A = _sym(A)
    attempts: list[tuple[torch.dtype, float]] = [(A.dtype, 0.0)]
    if A.dtype != torch.float64:
        attempts.append((torch.float64, 0.0))
    scale = float(A.abs().amax()) if A.numel() else 1.0
    scale = scale if scale > 0 else 1.0
    for j in range(max_retries):
        attempts.append((torch.float64, scale * 1e-10 * (DEFAULT_GROWTH ** j)))
    errors: list[str] = []
    for i, (dtype, shift) in enumerate(attempts):
        Ad = A.to(dtype)
        if shift:
            Ad = Ad + shift * _eye_like(Ad)
        try:
            w, U = torch.linalg.eigh(Ad)
        except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
            errors.append(f"{dtype}, shift {shift:g}: {exc}")
            continue
        if not _finite(w, U):
            errors.append(f"{dtype}, shift {shift:g}: non-finite output")
            continue
        if i > 0:
            _warn(f"eigh of factor {name} needed fallback ({dtype}, shift {shift:g})")
        return (w - shift).clamp_min(0.0), U
    raise LinalgFailure(
        f"eigendecomposition of Kronecker factor {name} (shape {tuple(A.shape)}) failed in "
        f"all {len(attempts)} attempts: " + "; ".join(errors)
    )


@dataclass(frozen=True)
class EigenFactors:
    """Cached eigendecompositions for the exact damped solve (eq. 34–35, ``eigen``).

    ``G = U_G diag(s) U_G^T`` and ``Q = U_Q diag(t) U_Q^T`` with ``s, t >= 0`` (clamped).
    Independent of the damping, so one object serves any number of ``k`` values.

    Attributes:
        U_G: ``(..., d_out, d_out)`` orthogonal eigenvectors of G.
        s: ``(..., d_out)`` clamped eigenvalues of G.
        U_Q: ``(..., d_in', d_in')`` orthogonal eigenvectors of Q.
        t: ``(..., d_in')`` clamped eigenvalues of Q.
    """

    U_G: Tensor
    s: Tensor
    U_Q: Tensor
    t: Tensor

    @classmethod
    def from_factors(
        cls, G: Tensor, Q: Tensor, *, max_retries: int = DEFAULT_MAX_RETRIES
    ) -> "EigenFactors":
        """Decompose ``G`` ``(..., d_out, d_out)`` and ``Q`` ``(..., d_in', d_in')``.

        Raises:
            LinalgFailure: a factor is non-finite or ``eigh`` fails in every attempt.
        """
        _check_factor(G, "G")
        _check_factor(Q, "Q")
        s, U_G = _safe_eigh(G, "G", max_retries)
        t, U_Q = _safe_eigh(Q, "Q", max_retries)
        dtype = torch.promote_types(s.dtype, t.dtype)
        return cls(U_G.to(dtype), s.to(dtype), U_Q.to(dtype), t.to(dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.s.dtype

    def to(self, dtype: torch.dtype) -> "EigenFactors":
        return EigenFactors(self.U_G.to(dtype), self.s.to(dtype), self.U_Q.to(dtype), self.t.to(dtype))

    def matvec(self, V: Tensor) -> Tensor:
        """``G @ V @ Q`` from the (clamped) decomposition; ``V`` is ``(..., d_out, d_in')``."""
        Vd = V.to(self.dtype)
        Y = (self.U_G.mT @ Vd @ self.U_Q) * (self.s[..., :, None] * self.t[..., None, :])
        return (self.U_G @ Y @ self.U_Q.mT).to(V.dtype)

    def _solve_once(self, V: Tensor, k: float) -> Tensor:
        Y = self.U_G.mT @ V @ self.U_Q
        Y = Y / (self.s[..., :, None] * self.t[..., None, :] + k)
        return self.U_G @ Y @ self.U_Q.mT

    def solve(
        self,
        V: Tensor,
        damping: float | Tensor,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        growth: float = DEFAULT_GROWTH,
    ) -> Tensor:
        """Exact solve of ``(kron(G, Q) + k I) vec_r(X) = vec_r(V)`` (eq. 34–35).

        ``X = U_G [(U_G^T V U_Q) / (s t^T + k)] U_Q^T``.

        Args:
            V: ``(..., d_out, d_in')`` right-hand side (e.g. the layer gradient).
            damping: ``k = γ + η > 0``.

        Returns:
            ``(..., d_out, d_in')`` solution ``X`` in ``V.dtype``.

        Raises:
            LinalgFailure: ``V`` is non-finite, or the result stays non-finite after
                retrying in float64 and with damping ``k·growth^j``, ``j <= max_retries``.
        """
        k = _check_damping(damping)
        _check_rhs(V, self.U_G, self.U_Q)
        attempts: list[tuple[EigenFactors, float]] = [(self, k)]
        hi = self if self.dtype == torch.float64 else self.to(torch.float64)
        if hi is not self:
            attempts.append((hi, k))
        attempts += [(hi, k * growth ** (j + 1)) for j in range(max_retries)]
        for i, (fac, kk) in enumerate(attempts):
            X = fac._solve_once(V.to(fac.dtype), kk).to(V.dtype)
            if _finite(X):
                if i > 0:
                    _warn(f"eigen damped solve needed fallback ({fac.dtype}, damping {kk:g})")
                return X
        raise LinalgFailure(
            f"eigen damped Kronecker solve gave non-finite values for V of shape "
            f"{tuple(V.shape)} with damping {k:g} even in float64 and with damping up to "
            f"{attempts[-1][1]:g}"
        )


# ----------------------------------------------------------------------------- factored


def _psd_project(A: Tensor) -> Tensor | None:
    try:
        w, U = torch.linalg.eigh(_sym(A))
    except RuntimeError:
        return None
    if not _finite(w, U):
        return None
    return _sym((U * w.clamp_min(0.0)[..., None, :]) @ U.mT)


def _chol(A: Tensor, explicit_inverse: bool) -> Tensor | None:
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()) or not _finite(L):
        return None
    if explicit_inverse:
        Ainv = torch.cholesky_inverse(L)
        if not _finite(Ainv):
            return None
        return Ainv  # LAPACK potri fills both triangles from one: exactly symmetric
    return L


ALIGN = 16  # floats: 64-byte rows, the width at which CPU GEMM kernels run at full rate


def _padded_size(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _lapack_size(p: int) -> int:
    """The buffer size for the decomposition of a ``(p, p)`` padded matrix: ``p``, or ``p + ALIGN``
    when p is a multiple of 256 — there LAPACK's Cholesky ran 2.5–3× slower on this CPU
    (n = 256, 512, 1024: cache-set conflicts of a power-of-two leading dimension), while the
    GEMMs that apply the inverse do not care; they use the ``(p, p)`` corner (a strided view)."""
    return p + ALIGN if p % 256 == 0 else p


def _padded_inverse(A: Tensor, c: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(A + cI)⁻¹`` by Cholesky and its inverse, inside a ``(p, p)`` identity-padded matrix.

    p = n rounded up to ALIGN.  Factorises ``[[A + cI, 0], [0, I]]`` (block diagonal, so its
    inverse is ``[[(A + cI)⁻¹, 0], [0, I]]``).  On this repository's CPU a GEMM with n = 785
    or 1001 ran at ~35 GFLOP/s and with 784/1008 at ~50–57 on a busy day (the ``[W | b]``
    layout's d_in + 1 columns are always misaligned); with a zero-padded right-hand side
    ``[V 0]`` the padded product is exact.

    One buffer, no other copy: the shifted, padded matrix is written into the column-major
    view ``F`` of a row-major ``(p, p)`` buffer (LAPACK's layout, so torch's ``out=`` Cholesky
    and inverse work on it in place — a row-major ``out=`` made torch copy and was 4–10 %
    slower; this is as fast as the out-of-place calls and needs a quarter of their peak
    memory).  ``A`` is copied row by row into the buffer, so that ``F``'s upper triangle is
    ``A``'s lower one, and LAPACK factorises ``F = UᵀU`` reading only that triangle (copying
    ``A`` transposed into ``F``'s lower triangle, as until 11-30, was a strided copy that took
    a fifth of the decomposition's time at n = 1001).  The inverse fills both triangles of
    ``F`` exactly symmetrically, so the row-major buffer holds it too.

    On other devices (CUDA) the Cholesky factor and the inverse are made out of place.

    Returns ``(view of the top-left n×n inverse, padded (p, p) inverse)`` (views of the buffer,
    see :func:`_lapack_size`) or ``None`` if the Cholesky fails or the inverse is not finite.
    """
    n = A.shape[-1]
    p = _padded_size(n)
    q = _lapack_size(p)
    buf = A.new_empty(q, q)
    buf[:n, :n] = A  # a row copy: buf's lower triangle is A's
    F = buf.mT  # column-major: F's upper triangle is buf's lower one, i.e. A's (LAPACK reads nothing else)
    d = F.diagonal()
    d[:n] += c.reshape(())
    if q > n:
        F[n:, :].zero_()
        F[:n, n:].zero_()
        d[n:] = 1.0
    if A.device.type == "cpu":
        info = torch.empty((), dtype=torch.int32, device=A.device)
        torch.linalg.cholesky_ex(F, upper=True, out=(F, info))  # F = UᵀU, LAPACK potrf 'U'
        if bool(info != 0):
            return None
        torch.cholesky_inverse(F, upper=True, out=F)  # LAPACK potri, both triangles filled from one: exactly symmetric
    else:  # in place through out= (a transposed view that aliases the input) is a CPU-tested path only
        U, info = torch.linalg.cholesky_ex(F, upper=True)
        if bool(info != 0):
            return None
        buf = torch.cholesky_inverse(U, upper=True)  # a fresh (q, q) tensor holding the inverse
        del U
    if not _finite(buf):
        return None
    return buf[:n, :n], buf[:p, :p]  # [[(A + cI)⁻¹, 0], [0, I]] of size p: the padding is block diagonal


def _diagonal_inverse(A: Tensor, c: Tensor) -> Tensor | None:
    """``1 / (diag(A) + c)`` for an exactly diagonal ``A``; ``None`` unless finite and > 0."""
    inv = 1.0 / (A.diagonal() + c.reshape(()))
    if not _finite(inv) or bool((inv <= 0).any()):
        return None
    return inv


def _decompose(A: Tensor, c: Tensor, explicit_inverse: bool) -> tuple | None:
    """One damped factor ``A + cI``: ``(factor, padded inverse or None, inverse diagonal or None)``.

    Explicit inverses of plain matrices: an exactly diagonal ``A`` is inverted element-wise,
    any other one through :func:`_padded_inverse`.  Otherwise the Cholesky factor (or, for
    batched factors, the unpadded inverse).  ``None`` when this attempt failed.
    """
    if explicit_inverse and A.dim() == 2:
        if is_diagonal(A):
            inv = _diagonal_inverse(A, c)
            if inv is not None:
                return torch.diag(inv), None, inv
        r = _padded_inverse(A, c)
        return None if r is None else (r[0], r[1], None)
    F = _chol(_shifted(A, c[..., None, None]), explicit_inverse)
    return None if F is None else (F, None, None)


@dataclass(frozen=True)
class FactoredFactors:
    """Cached factors for the approximate damped solve of eq. 36–38 (``factored``).

    Holds either the lower Cholesky factors of ``A_G = G + (√k/ω) I`` and
    ``A_Q = Q + ω√k I`` or, with ``explicit_inverse=True``, the inverses ``A_G⁻¹`` and
    ``A_Q⁻¹``.  The damping is baked in, so a new object is needed per ``k``.

    Attributes:
        G_factor: ``(..., d_out, d_out)`` Cholesky factor of ``A_G`` (or ``A_G⁻¹``).
        Q_factor: ``(..., d_in', d_in')`` Cholesky factor of ``A_Q`` (or ``A_Q⁻¹``).
        omega: ω of eq. 38 (tensor of the factors' batch shape, 0-dim for matrices).
        damping: the requested ``k``.
        damping_used: the ``k`` actually used (``> damping`` after a damping fallback).
        explicit_inverse: whether the ``*_factor`` fields are explicit inverses.
        padded: explicit inverses of plain matrices: ``(A_G⁻¹, A_Q⁻¹)`` embedded in
            identity-padded ``(p, p)`` matrices with p a multiple of 16 (``G_factor`` and
            ``Q_factor`` are views of them), ``None`` for a diagonal factor.
        diagonal: ``(diag(A_G⁻¹), diag(A_Q⁻¹))`` for exactly diagonal factors, else ``None``
            entries; such a factor is applied element-wise (a GEMM saved per solve).
    """

    G_factor: Tensor
    Q_factor: Tensor
    omega: Tensor
    damping: float
    damping_used: float
    explicit_inverse: bool = False
    padded: tuple | None = field(default=None, repr=False, compare=False)
    diagonal: tuple | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_factors(
        cls,
        G: Tensor,
        Q: Tensor,
        damping: float | Tensor,
        *,
        omega: float | Tensor | None = None,
        explicit_inverse: bool = False,
        max_retries: int = DEFAULT_MAX_RETRIES,
        growth: float = DEFAULT_GROWTH,
        assume_finite: bool = False,
    ) -> "FactoredFactors":
        """Factorise ``G + (√k/ω) I`` and ``Q + ω√k I`` (eq. 36).

        Args:
            G: ``(..., d_out, d_out)`` PSD factor (only its lower triangle is read, except
                by the PSD-projection fallback, which symmetrises).
            Q: ``(..., d_in', d_in')`` PSD factor (likewise).
            damping: ``k = γ + η > 0``.
            omega: override for ω; default :func:`factored_omega` (eq. 38, trace norm).
            explicit_inverse: store explicit inverses (``solve`` = two matmuls) instead
                of Cholesky factors (``solve`` = two triangular solve pairs).
            assume_finite: skip the pass that checks every entry of ``G`` and ``Q`` for
                NaN/Inf (the caller has just checked them: the optimiser checks each fresh
                estimate once, not again for every damping it tries).

        Attempts, in order: native dtype; float64; float64 with PSD-projected factors;
        then damping ``k·growth^j`` for ``j = 1..max_retries``.

        Raises:
            LinalgFailure: a factor is non-finite or every attempt failed.
        """
        k = _check_damping(damping)
        _check_factor(G, "G", not assume_finite)
        _check_factor(Q, "Q", not assume_finite)
        if omega is None:
            om = factored_omega(G, Q)
        else:
            om = torch.as_tensor(omega, dtype=G.dtype, device=G.device)
            if not bool(torch.isfinite(om).all()) or bool((om <= 0).any()):
                raise ValueError(f"omega must be finite and > 0, got {omega!r}")

        def attempts():  # the float64 copies and projections are made only when needed
            yield G, Q, k, "native dtype"
            G64, Q64 = G.to(torch.float64), Q.to(torch.float64)
            if G.dtype != torch.float64:
                yield G64, Q64, k, "float64"
            Gp, Qp = _psd_project(G64), _psd_project(Q64)
            Gp = G64 if Gp is None else Gp
            Qp = Q64 if Qp is None else Qp
            yield Gp, Qp, k, "float64, PSD-projected factors"
            for j in range(max_retries):
                yield Gp, Qp, k * growth ** (j + 1), "float64, PSD-projected, more damping"

        tried: list[str] = []
        for i, (Ga, Qa, kk, label) in enumerate(attempts()):
            o = om.to(Ga.dtype)
            rk = math.sqrt(kk)
            dg = _decompose(Ga, rk / o, explicit_inverse)
            dq = _decompose(Qa, o * rk, explicit_inverse) if dg is not None else None
            tried.append(f"{label} (k={kk:g})")
            if dg is None or dq is None:
                continue
            if i > 0:
                _warn(f"factored damped solve needed fallback: {label}, damping {kk:g}")
            padded = diagonal = None
            if explicit_inverse and Ga.dim() == 2:
                padded, diagonal = (dg[1], dq[1]), (dg[2], dq[2])
            return cls(dg[0], dq[0], o, k, kk, explicit_inverse, padded, diagonal)
        raise LinalgFailure(
            f"Cholesky of damped Kronecker factors G {tuple(G.shape)} / Q {tuple(Q.shape)} "
            f"failed in every attempt: " + ", ".join(tried)
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.G_factor.dtype

    def _solve_padded(self, V: Tensor) -> Tensor:
        """``A_G⁻¹ V A_Q⁻¹`` for a plain ``(d_out, d_in')`` V with the padded/diagonal inverses.

        V is zero-padded to the inverses' aligned sizes (exact: the padding is block diagonal).
        The result is a contiguous copy of the wanted block: later products must not depend on
        the padded row stride (a BLAS call's rounding can change with the leading dimension;
        work-shared runs gather contiguous results and must stay bit-identical to replicated
        ones). A diagonal factor scales a fresh copy in place.
        """
        (Gp, Qp), (gd, qd) = self.padded, self.diagonal  # type: ignore[misc]
        n_out, n_in = V.shape
        rows = 0 if Gp is None else Gp.shape[0] - n_out
        cols = 0 if Qp is None else Qp.shape[0] - n_in
        X = V.to(self.dtype)
        if rows or cols:
            X = torch.nn.functional.pad(X, (0, cols, 0, rows))
        owned = X is not V  # a fresh copy may be scaled in place
        if Gp is not None:
            X = Gp @ X
        else:
            X = X.mul_(gd[:, None]) if owned else gd[:, None] * X
        owned = True
        if Qp is not None:
            X = X @ Qp
        else:
            X = X.mul_(qd) if owned else X * qd
        return X[:n_out, :n_in].contiguous()

    def _solve_in(self, V: Tensor, dtype: torch.dtype) -> Tensor:
        if self.padded is not None and V.dim() == 2 and self.dtype == dtype:
            return self._solve_padded(V)
        A, B = self.G_factor.to(dtype), self.Q_factor.to(dtype)
        Vd = V.to(dtype)
        if self.explicit_inverse:
            return A @ Vd @ B
        Y = torch.cholesky_solve(Vd, A)  # A_G^{-1} V
        # Y A_Q^{-1} = (A_Q^{-1} Y^T)^T since A_Q is symmetric
        return torch.cholesky_solve(Y.mT, B).mT

    def solve(self, V: Tensor, *, assume_finite: bool = False) -> Tensor:
        """Apply ``kron(A_G, A_Q)⁻¹``: ``X = (G + √k/ω I)⁻¹ V (Q + ω√k I)⁻¹`` (eq. 36).

        Args:
            V: ``(..., d_out, d_in')`` right-hand side.
            assume_finite: skip the check of ``V`` for NaN/Inf (the caller has checked it;
                the result is checked either way, so a non-finite ``V`` still raises).

        Returns:
            ``(..., d_out, d_in')`` in ``V.dtype``.

        Raises:
            LinalgFailure: ``V`` non-finite or the result non-finite even in float64.
        """
        _check_rhs(V, self.G_factor, self.Q_factor, not assume_finite)
        X = self._solve_in(V, self.dtype).to(V.dtype)
        if _finite(X):
            return X
        if self.dtype != torch.float64:
            X = self._solve_in(V, torch.float64).to(V.dtype)
            if _finite(X):
                _warn("factored damped solve needed float64 fallback")
                return X
        raise LinalgFailure(
            f"factored damped Kronecker solve produced non-finite values for V of shape "
            f"{tuple(V.shape)} (damping {self.damping_used:g})"
        )


# ----------------------------------------------------------------------------- front door


def damped_kron_solve(
    G: Tensor,
    Q: Tensor,
    V: Tensor,
    damping: float | Tensor,
    method: Literal["factored", "eigen"] = "factored",
    *,
    omega: float | Tensor | None = None,
    explicit_inverse: bool = False,
) -> Tensor:
    """Per-layer step direction of eq. 34: solve ``(kron(G, Q) + k I) vec_r(X) = vec_r(V)``.

    Args:
        G: ``(..., d_out, d_out)`` PSD pre-activation factor.
        Q: ``(..., d_in', d_in')`` PSD activation factor.
        V: ``(..., d_out, d_in')`` right-hand side (layer gradient ``[∇W | ∇b]``).
        damping: ``k = γ + η > 0`` (eq. 35).
        method: ``"eigen"`` — exact (:class:`EigenFactors`); ``"factored"`` — the
            approximation of eq. 36 with ω of eq. 38 (:class:`FactoredFactors`).
        omega: ``factored`` only: override ω.
        explicit_inverse: ``factored`` only: use explicit inverses instead of Cholesky solves.

    Returns:
        ``(..., d_out, d_in')`` solution ``X`` in ``V.dtype`` (never NaN).

    Raises:
        LinalgFailure: non-finite inputs or all numerical fallbacks failed.
        ValueError: bad shapes, ``damping <= 0`` or an unknown ``method``.
    """
    if method == "eigen":
        if omega is not None or explicit_inverse:
            raise ValueError("omega / explicit_inverse apply to method='factored' only")
        return EigenFactors.from_factors(G, Q).solve(V, damping)
    if method == "factored":
        fac = FactoredFactors.from_factors(
            G, Q, damping, omega=omega, explicit_inverse=explicit_inverse
        )
        return fac.solve(V)
    raise ValueError(f"unknown method {method!r}; expected 'factored' or 'eigen'")
