"""Tests for gnopt.linalg: Kronecker mat-vec, damped Kronecker solves (eq. 33-38), CG."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gnopt.linalg import (
    CGInfo,
    EigenFactors,
    FactoredFactors,
    LinalgFailure,
    LinalgFallbackWarning,
    conjugate_gradient,
    damped_kron_matvec,
    damped_kron_solve,
    factored_omega,
    kron_matvec,
    kron_to_dense,
    mean_trace,
    unvec_r,
    vec_r,
)

F64 = torch.float64
HYP = settings(max_examples=25, deadline=None)
dims = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
dampings = st.floats(min_value=-3.0, max_value=1.0).map(lambda e: 10.0**e)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_psd(n: int, rank: int | None, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Random symmetric PSD (n, n) of the given rank (rank 0 -> zero matrix)."""
    r = n if rank is None else rank
    X = torch.randn(n, max(r, 1), generator=g, dtype=F64) * scale
    if r == 0:
        X = X * 0
    return X @ X.T / max(r, 1)


def dense_exact(G, Q, V, k):
    n = G.shape[0] * Q.shape[0]
    C = torch.kron(G, Q) + k * torch.eye(n, dtype=G.dtype)
    return torch.linalg.solve(C, V.reshape(-1)).reshape(V.shape)


def dense_factored(G, Q, V, k, omega):
    rk = math.sqrt(k)
    A = torch.kron(G + rk / omega * torch.eye(G.shape[0], dtype=G.dtype),
                   Q + omega * rk * torch.eye(Q.shape[0], dtype=Q.dtype))
    return torch.linalg.solve(A, V.reshape(-1)).reshape(V.shape)


# ----------------------------------------------------------------------------- kron


@HYP
@given(d_out=dims, d_in=dims, seed=seeds)
def test_kron_matvec_matches_torch_kron(d_out, d_in, seed):
    g = gen(seed)
    G = torch.randn(d_out, d_out, generator=g, dtype=F64)
    G = G + G.T
    Q = torch.randn(d_in, d_in, generator=g, dtype=F64)
    Q = Q + Q.T
    V = torch.randn(d_out, d_in, generator=g, dtype=F64)
    expected = (torch.kron(G, Q) @ V.reshape(-1)).reshape(d_out, d_in)
    torch.testing.assert_close(kron_matvec(G, Q, V), expected)
    torch.testing.assert_close(kron_to_dense(G, Q), torch.kron(G, Q))


@HYP
@given(d_out=dims, d_in=dims, batch=st.integers(1, 3), seed=seeds)
def test_kron_matvec_batched(d_out, d_in, batch, seed):
    g = gen(seed)
    G = rand_psd(d_out, None, g)
    Q = rand_psd(d_in, None, g)
    V = torch.randn(batch, 2, d_out, d_in, generator=g, dtype=F64)
    out = kron_matvec(G, Q, V)
    K = torch.kron(G, Q)
    expected = (vec_r(V) @ K.T).reshape(V.shape)
    torch.testing.assert_close(out, expected)


def test_vec_r_roundtrip_and_shape_errors():
    V = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(vec_r(V), V.reshape(-1))
    assert torch.equal(unvec_r(vec_r(V), (3, 4)), V)
    with pytest.raises(ValueError):
        kron_matvec(torch.eye(3), torch.eye(3), V)
    with pytest.raises(ValueError):
        kron_matvec(torch.eye(3), torch.eye(4), torch.ones(4))


# ----------------------------------------------------------------------------- eigen


@HYP
@given(d_out=dims, d_in=dims, seed=seeds, k=dampings, data=st.data())
def test_eigen_solve_matches_dense(d_out, d_in, seed, k, data):
    rg = data.draw(st.integers(0, d_out))
    rq = data.draw(st.integers(0, d_in))
    g = gen(seed)
    G = rand_psd(d_out, rg, g, scale=2.0)
    Q = rand_psd(d_in, rq, g)
    V = torch.randn(d_out, d_in, generator=g, dtype=F64)
    X = damped_kron_solve(G, Q, V, k, method="eigen")
    torch.testing.assert_close(X, dense_exact(G, Q, V, k), rtol=1e-8, atol=1e-8)
    # it really solves the damped system (eq. 35)
    torch.testing.assert_close(damped_kron_matvec(G, Q, X, k), V, rtol=1e-8, atol=1e-8)


def test_eigen_factors_reuse_over_dampings_and_batches():
    g = gen(0)
    G, Q = rand_psd(4, 2, g), rand_psd(3, None, g)
    fac = EigenFactors.from_factors(G, Q)
    assert (fac.s >= 0).all() and (fac.t >= 0).all()
    V = torch.randn(5, 4, 3, generator=g, dtype=F64)
    torch.testing.assert_close(fac.matvec(V), kron_matvec(G, Q, V))
    for k in (1e-2, 1e-1, 1.0):  # e.g. the greedy γ search
        X = fac.solve(V, k)
        for b in range(5):
            torch.testing.assert_close(X[b], dense_exact(G, Q, V[b], k))


def test_eigen_clamps_negative_eigenvalues():
    g = gen(1)
    U, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))
    w = torch.tensor([2.0, 1.0, 0.0, -1e-3], dtype=F64)  # "PSD in theory", rounding made it not
    G = U @ torch.diag(w) @ U.T
    Q = rand_psd(3, None, g)
    fac = EigenFactors.from_factors(G, Q)
    assert (fac.s >= 0).all()
    G_clamped = U @ torch.diag(w.clamp_min(0)) @ U.T
    V = torch.randn(4, 3, generator=g, dtype=F64)
    torch.testing.assert_close(fac.solve(V, 1e-6), dense_exact(G_clamped, Q, V, 1e-6))


def test_eigen_zero_factor_gives_scaled_identity():
    V = torch.randn(3, 2, dtype=F64)
    X = damped_kron_solve(torch.zeros(3, 3, dtype=F64), torch.eye(2, dtype=F64), V, 0.5, method="eigen")
    torch.testing.assert_close(X, V / 0.5)


# ----------------------------------------------------------------------------- factored


@HYP
@given(d_out=dims, d_in=dims, seed=seeds, k=dampings, inv=st.booleans(), data=st.data())
def test_factored_solve_matches_dense(d_out, d_in, seed, k, inv, data):
    rg = data.draw(st.integers(0, d_out))
    rq = data.draw(st.integers(0, d_in))
    g = gen(seed)
    G = rand_psd(d_out, rg, g, scale=3.0)
    Q = rand_psd(d_in, rq, g)
    V = torch.randn(d_out, d_in, generator=g, dtype=F64)
    omega = float(factored_omega(G, Q))
    X = damped_kron_solve(G, Q, V, k, method="factored", explicit_inverse=inv)
    torch.testing.assert_close(X, dense_factored(G, Q, V, k, omega), rtol=1e-8, atol=1e-8)


def test_omega_is_mean_trace_ratio_and_assignment():
    g = gen(2)
    G = rand_psd(5, None, g, scale=10.0)  # large G
    Q = rand_psd(2, None, g, scale=0.1)   # small Q, different dims
    omega = float(factored_omega(G, Q))
    expected = math.sqrt((torch.trace(Q) / 2) / (torch.trace(G) / 5))
    assert omega == pytest.approx(expected, rel=1e-12)
    assert float(mean_trace(G)) == pytest.approx(float(torch.trace(G)) / 5)
    fac = FactoredFactors.from_factors(G, Q, 0.3)
    rk = math.sqrt(0.3)
    # G gets +√k/ω, Q gets +ω√k (eq. 36 in row-major order)
    torch.testing.assert_close(fac.G_factor @ fac.G_factor.T, G + rk / omega * torch.eye(5, dtype=F64))
    torch.testing.assert_close(fac.Q_factor @ fac.Q_factor.T, Q + omega * rk * torch.eye(2, dtype=F64))


def _residual_trace_norm(G, Q, k, omega):
    n = G.shape[0] * Q.shape[0]
    rk = math.sqrt(k)
    approx = torch.kron(G + rk / omega * torch.eye(G.shape[0], dtype=F64),
                        Q + omega * rk * torch.eye(Q.shape[0], dtype=F64))
    R = torch.kron(G, Q) + k * torch.eye(n, dtype=F64) - approx
    return float(torch.linalg.matrix_norm(R, ord="nuc"))


@pytest.mark.parametrize("seed", range(4))
def test_omega_minimises_residual_bound(seed):
    g = gen(seed)
    G = rand_psd(4, 3, g, scale=5.0)
    Q = rand_psd(3, None, g, scale=0.2)
    k = 0.7
    omega = float(factored_omega(G, Q))
    rk = math.sqrt(k)

    def bound(w):  # eq. 37, trace norm: w⁻¹√k‖Q⊗I‖ + w√k‖I⊗G‖ (paper's column order)
        return rk / w * float(torch.trace(Q)) * 4 + w * rk * 3 * float(torch.trace(G))

    best = _residual_trace_norm(G, Q, k, omega)
    # for PSD factors the eq.-37 bound is tight in the trace norm
    assert best == pytest.approx(bound(omega), rel=1e-9)
    for w in (0.5 * omega, 2 * omega, 0.9 * omega, 1.1 * omega, 1 / omega):
        if abs(w - omega) > 1e-12:
            assert _residual_trace_norm(G, Q, k, w) > best
            assert bound(w) > bound(omega)


def test_factored_special_cases():
    V = torch.randn(3, 4, dtype=F64)
    a, b, k = 2.0, 5.0, 0.3
    G, Q = a * torch.eye(3, dtype=F64), b * torch.eye(4, dtype=F64)
    # ω² = b/a, so (a + √k/ω)(b + ω√k) = (√(ab) + √k)²
    X = damped_kron_solve(G, Q, V, k, method="factored")
    torch.testing.assert_close(X, V / (math.sqrt(a * b) + math.sqrt(k)) ** 2)
    torch.testing.assert_close(damped_kron_solve(G, Q, V, k, method="eigen"), V / (a * b + k))
    # G = 0: ω := 1 (documented), approximation is √k I ⊗ (Q + √k I)
    Z = torch.zeros(3, 3, dtype=F64)
    assert float(factored_omega(Z, Q)) == 1.0
    assert float(factored_omega(G, torch.zeros(4, 4, dtype=F64))) == 1.0
    X0 = damped_kron_solve(Z, Q, V, k)
    torch.testing.assert_close(X0, V / (math.sqrt(k) * (b + math.sqrt(k))))
    assert torch.isfinite(damped_kron_solve(Z, torch.zeros(4, 4, dtype=F64), V, k)).all()


def test_factored_approaches_exact_as_damping_vanishes():
    g = gen(3)
    G = rand_psd(4, None, g) + 0.5 * torch.eye(4, dtype=F64)
    Q = rand_psd(3, None, g) + 0.5 * torch.eye(3, dtype=F64)
    V = torch.randn(4, 3, generator=g, dtype=F64)
    errs = []
    for k in (1e-2, 1e-4, 1e-6, 1e-8):
        Xf = damped_kron_solve(G, Q, V, k, method="factored")
        Xe = damped_kron_solve(G, Q, V, k, method="eigen")
        errs.append(float((Xf - Xe).norm() / Xe.norm()))
    assert errs[-1] < 1e-3
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:]))


def test_factored_batched_factors_and_rhs():
    g = gen(4)
    G = torch.stack([rand_psd(3, None, g), rand_psd(3, 1, g)])
    Q = torch.stack([rand_psd(2, None, g), rand_psd(2, None, g) * 4])
    V = torch.randn(2, 3, 2, generator=g, dtype=F64)
    for inv in (False, True):
        X = FactoredFactors.from_factors(G, Q, 0.1, explicit_inverse=inv).solve(V)
        for i in range(2):
            w = float(factored_omega(G[i], Q[i]))
            torch.testing.assert_close(X[i], dense_factored(G[i], Q[i], V[i], 0.1, w))
    Xe = EigenFactors.from_factors(G, Q).solve(V, 0.1)
    for i in range(2):
        torch.testing.assert_close(Xe[i], dense_exact(G[i], Q[i], V[i], 0.1))


def test_omega_override():
    g = gen(5)
    G, Q = rand_psd(3, None, g), rand_psd(2, None, g)
    V = torch.randn(3, 2, generator=g, dtype=F64)
    X = damped_kron_solve(G, Q, V, 0.2, omega=3.0)
    torch.testing.assert_close(X, dense_factored(G, Q, V, 0.2, 3.0))


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("method", ["eigen", "factored"])
@pytest.mark.parametrize("which", ["G", "Q"])
def test_nan_factor_raises_linalg_failure(method, which):
    G, Q = torch.eye(3, dtype=F64), torch.eye(2, dtype=F64)
    if which == "G":
        G[0, 1] = G[1, 0] = float("nan")
    else:
        Q[1, 1] = float("inf")
    with pytest.raises(LinalgFailure, match=which):
        damped_kron_solve(G, Q, torch.ones(3, 2, dtype=F64), 0.1, method=method)


@pytest.mark.parametrize("method", ["eigen", "factored"])
def test_bad_inputs(method):
    G, Q = torch.eye(3, dtype=F64), torch.eye(2, dtype=F64)
    V = torch.ones(3, 2, dtype=F64)
    V_nan = V.clone()
    V_nan[0, 0] = float("nan")
    with pytest.raises(LinalgFailure):
        damped_kron_solve(G, Q, V_nan, 0.1, method=method)
    for k in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            damped_kron_solve(G, Q, V, k, method=method)
    with pytest.raises(ValueError):
        damped_kron_solve(G, Q, torch.ones(2, 3, dtype=F64), 0.1, method=method)
    with pytest.raises(ValueError):
        damped_kron_solve(G, Q, V, 0.1, method="cholesky")  # type: ignore[arg-type]


def test_float32_ill_conditioned_falls_back_to_float64():
    # rank-3 PSD factor with large entries: float32 Cholesky of G + 1e-5 I breaks
    # down from rounding, float64 succeeds.
    found = None
    for seed in range(50):
        g = gen(seed)
        X = torch.randn(8, 3, generator=g, dtype=F64) * 10
        G = (X @ X.T).float()
        A = G + 1e-5 * torch.eye(8)
        if torch.linalg.cholesky_ex(A)[1] != 0 and torch.linalg.cholesky_ex(A.double())[1] == 0:
            found = G
            break
    assert found is not None
    G = found
    Q = torch.eye(2)
    omega = float(factored_omega(G, Q))
    k = (1e-5 * omega) ** 2  # so that G receives exactly the breaking shift √k/ω = 1e-5
    V = torch.randn(8, 2, generator=gen(0))
    with pytest.warns(LinalgFallbackWarning):
        fac = FactoredFactors.from_factors(G, Q, k)
    assert fac.dtype == F64 and fac.damping_used == k
    X = fac.solve(V)
    assert X.dtype == torch.float32 and torch.isfinite(X).all()
    ref = dense_factored(G.double(), Q.double(), V.double(), k, omega)
    torch.testing.assert_close(X.double(), ref, rtol=1e-4, atol=1e-3 * float(ref.abs().max()))
    # the eigen path in float32 is finite too
    Xe = damped_kron_solve(G, Q, V, k, method="eigen")
    assert Xe.dtype == torch.float32 and torch.isfinite(Xe).all()


def test_indefinite_factor_uses_psd_projection():
    G = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))  # badly broken "PSD" factor
    Q = torch.eye(2, dtype=F64)
    V = torch.ones(2, 2, dtype=F64)
    with pytest.warns(LinalgFallbackWarning):
        fac = FactoredFactors.from_factors(G, Q, 0.01)
    X = fac.solve(V)
    assert torch.isfinite(X).all()
    assert fac.damping_used == 0.01
    G_proj = torch.diag(torch.tensor([1.0, 0.0], dtype=F64))
    torch.testing.assert_close(X, dense_factored(G_proj, Q, V, 0.01, float(factored_omega(G, Q))))


def test_cholesky_failure_increases_damping_then_raises(monkeypatch):
    G, Q = torch.eye(3, dtype=F64), torch.eye(2, dtype=F64)
    real = torch.linalg.cholesky_ex
    # fail whenever the smallest diagonal is below 1.5, i.e. until damping grows enough
    def flaky(A, **kw):
        L, info = real(A, **kw)
        if float(A.diagonal(dim1=-2, dim2=-1).min()) < 1.5:
            return L, torch.ones_like(info)
        return L, info
    monkeypatch.setattr(torch.linalg, "cholesky_ex", flaky)
    with pytest.warns(LinalgFallbackWarning):
        fac = FactoredFactors.from_factors(G, Q, 0.01)
    assert fac.damping_used == pytest.approx(1.0)  # 0.01 * 10**2: √k = 1 -> diag 2
    assert torch.isfinite(fac.solve(torch.ones(3, 2, dtype=F64))).all()
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda A, **kw: (A * float("nan"), torch.ones(A.shape[:-2], dtype=torch.int32)))
    with pytest.raises(LinalgFailure, match="every attempt"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            FactoredFactors.from_factors(G, Q, 0.01)


def test_eigh_failure_retries_float64_then_raises(monkeypatch):
    real = torch.linalg.eigh

    def fail_f32(A, *a, **kw):
        if A.dtype == torch.float32:
            raise torch.linalg.LinAlgError("simulated eigh failure")
        return real(A, *a, **kw)

    monkeypatch.setattr(torch.linalg, "eigh", fail_f32)
    G, Q = torch.eye(3) * 2, torch.eye(2)
    with pytest.warns(LinalgFallbackWarning):
        fac = EigenFactors.from_factors(G, Q)
    assert fac.dtype == F64
    X = fac.solve(torch.ones(3, 2), 1.0)
    assert X.dtype == torch.float32
    torch.testing.assert_close(X, torch.ones(3, 2) / 3)

    def always_nan(A, *a, **kw):
        w, U = real(A, *a, **kw)
        return w * float("nan"), U

    monkeypatch.setattr(torch.linalg, "eigh", always_nan)
    with pytest.raises(LinalgFailure, match="eigendecomposition"):
        EigenFactors.from_factors(G, Q)


def test_eigen_solve_overflow_never_returns_nan():
    # float32 with subnormal damping: V / k overflows in float32 -> float64 retry, then
    # the cast back overflows again -> damping grows until finite.
    G, Q = torch.zeros(2, 2), torch.zeros(2, 2)
    fac = EigenFactors.from_factors(G, Q)
    V = torch.full((2, 2), 1e30)
    with pytest.warns(LinalgFallbackWarning):
        X = fac.solve(V, 1e-20, max_retries=12)
    assert torch.isfinite(X).all()
    with pytest.raises(LinalgFailure):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fac.solve(V, 1e-20, max_retries=1)


# ----------------------------------------------------------------------------- CG


def rand_spd(n, g, cond=100.0):
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    w = torch.logspace(0, math.log10(cond), n, dtype=F64)
    return U @ torch.diag(w) @ U.T


def test_cg_flat_matches_dense():
    g = gen(10)
    A = rand_spd(20, g)
    b = torch.randn(20, generator=g, dtype=F64)
    x, info = conjugate_gradient(lambda v: A @ v, b, tol=1e-12)
    assert isinstance(info, CGInfo)
    assert info.converged and info.reason == "converged"
    assert info.iterations <= 40
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-9)
    assert info.residual_norm <= 1e-12 * float(b.norm()) * 1.0001
    assert info.quadratic_value == pytest.approx(float(0.5 * x @ A @ x - b @ x), rel=1e-8)


def test_cg_matrix_shaped_and_x0():
    g = gen(11)
    A = rand_spd(12, g)
    B = torch.randn(3, 4, generator=g, dtype=F64)
    mv = lambda V: (A @ V.reshape(-1)).reshape(3, 4)
    x0 = torch.randn(3, 4, generator=g, dtype=F64)
    x, info = conjugate_gradient(mv, B, x0=x0, tol=1e-12)
    assert info.converged and x.shape == (3, 4)
    torch.testing.assert_close(x.reshape(-1), torch.linalg.solve(A, B.reshape(-1)))


@pytest.mark.parametrize("as_tuple", [False, True])
def test_cg_list_form_matches_dense(as_tuple):
    g = gen(12)
    shapes = [(3, 4), (5,), (2, 2)]
    n = sum(math.prod(s) for s in shapes)
    A = rand_spd(n, g)

    def flat(xs):
        return torch.cat([x.reshape(-1) for x in xs])

    def unflat(v):
        out, i = [], 0
        for s in shapes:
            m = math.prod(s)
            out.append(v[i:i + m].reshape(s))
            i += m
        return out

    b = unflat(torch.randn(n, generator=g, dtype=F64))
    if as_tuple:
        b = tuple(b)
    x, info = conjugate_gradient(lambda xs: unflat(A @ flat(xs)), b, tol=1e-12)
    assert isinstance(x, list) and [t.shape for t in x] == [torch.Size(s) for s in shapes]
    assert info.converged
    torch.testing.assert_close(flat(x), torch.linalg.solve(A, flat(b)), rtol=1e-8, atol=1e-9)


def test_cg_preconditioned():
    g = gen(13)
    d = torch.logspace(-3, 3, 60, dtype=F64)
    A = torch.diag(d) + 1e-3 * rand_spd(60, g, cond=10.0)
    b = torch.randn(60, generator=g, dtype=F64)
    ref = torch.linalg.solve(A, b)
    _, plain = conjugate_gradient(lambda v: A @ v, b, tol=1e-10)
    jac = A.diagonal()
    x, pre = conjugate_gradient(lambda v: A @ v, b, tol=1e-10, preconditioner=lambda r: r / jac)
    assert pre.converged and pre.iterations < plain.iterations
    torch.testing.assert_close(x, ref, rtol=1e-7, atol=1e-9)
    # exact preconditioner: one step
    Ainv = torch.linalg.inv(A)
    x1, one = conjugate_gradient(lambda v: A @ v, b, tol=1e-8, preconditioner=lambda r: Ainv @ r)
    assert one.iterations == 1 and one.converged


def test_cg_with_kronecker_block_and_factored_preconditioner():
    g = gen(14)
    G, Q, k = rand_psd(5, 2, g), rand_psd(4, None, g), 0.05
    V = torch.randn(5, 4, generator=g, dtype=F64)
    fac = FactoredFactors.from_factors(G, Q, k)
    x, info = conjugate_gradient(lambda X: damped_kron_matvec(G, Q, X, k), V, tol=1e-12,
                                 preconditioner=fac.solve)
    assert info.converged
    torch.testing.assert_close(x, damped_kron_solve(G, Q, V, k, method="eigen"), rtol=1e-8, atol=1e-9)


def test_cg_negative_curvature_detected():
    A = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=F64))
    b = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    x, info = conjugate_gradient(lambda v: A @ v, b)
    assert info.reason == "negative_curvature" and not info.converged
    assert info.iterations == 0 and torch.equal(x, torch.zeros(3, dtype=F64))
    # curvature turns negative later: iterate before the bad direction is returned
    b2 = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    x2, info2 = conjugate_gradient(lambda v: A @ v, b2)
    assert info2.reason == "negative_curvature"
    assert torch.isfinite(x2).all()
    # zero curvature (singular A with b in its null space direction)
    x3, info3 = conjugate_gradient(lambda v: torch.zeros_like(v), b2)
    assert info3.reason == "negative_curvature" and torch.equal(x3, torch.zeros(3, dtype=F64))


def test_cg_max_iter_respected():
    g = gen(15)
    A = rand_spd(50, g, cond=1e6)
    b = torch.randn(50, generator=g, dtype=F64)
    calls = []

    def mv(v):
        calls.append(1)
        return A @ v

    x, info = conjugate_gradient(mv, b, tol=1e-14, max_iter=3)
    assert info.iterations == 3 and info.reason == "max_iter" and not info.converged
    assert len(calls) == 3 and torch.isfinite(x).all()
    assert info.quadratic_value < 0.0  # φ(x3) < φ(0): CG decreases the quadratic
    x0, info0 = conjugate_gradient(mv, b, max_iter=0)
    assert info0.iterations == 0 and torch.equal(x0, torch.zeros_like(b))


def test_cg_non_finite_returns_last_finite_iterate():
    g = gen(16)
    A = rand_spd(10, g)
    b = torch.randn(10, generator=g, dtype=F64)
    count = [0]

    def mv(v):
        count[0] += 1
        out = A @ v
        return out * float("nan") if count[0] == 3 else out

    x, info = conjugate_gradient(mv, b, tol=1e-14)
    assert info.reason == "non_finite" and info.iterations == 2
    assert torch.isfinite(x).all()
    _, ref = conjugate_gradient(lambda v: A @ v, b, max_iter=2)
    assert info.residual_norm == pytest.approx(ref.residual_norm)
    b_nan = b.clone()
    b_nan[0] = float("inf")
    x_nan, info_nan = conjugate_gradient(lambda v: A @ v, b_nan)
    assert info_nan.reason == "non_finite" and torch.isfinite(x_nan).all()


def test_cg_zero_rhs_and_bad_preconditioner():
    A = torch.eye(4, dtype=F64)
    x, info = conjugate_gradient(lambda v: A @ v, torch.zeros(4, dtype=F64))
    assert info.converged and info.iterations == 0 and torch.equal(x, torch.zeros(4, dtype=F64))
    _, info2 = conjugate_gradient(lambda v: A @ v, torch.ones(4, dtype=F64), preconditioner=lambda r: -r)
    assert info2.reason == "bad_preconditioner" and not info2.converged


def test_cg_martens_progress_criterion():
    g = gen(17)
    n = 200
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    A = U @ torch.diag(torch.logspace(-6, 0, n, dtype=F64)) @ U.T
    b = A @ torch.randn(n, generator=g, dtype=F64)  # φ dominated by the large eigenvalues
    _, full = conjugate_gradient(lambda v: A @ v, b, tol=1e-15, max_iter=100)
    x, info = conjugate_gradient(lambda v: A @ v, b, tol=1e-15, max_iter=100, progress_tol=5e-4)
    assert full.reason == "max_iter"
    assert info.reason == "progress" and info.converged
    assert 10 < info.iterations < 100
    assert info.quadratic_value < 0
    assert info.quadratic_value == pytest.approx(float(0.5 * x @ A @ x - b @ x), rel=1e-6)
    # it stopped because progress stalled: within 1% of the quadratic's value after 100 steps
    assert info.quadratic_value == pytest.approx(full.quadratic_value, rel=1e-2)
