"""gnopt.numerics (exact fast finiteness test, norms, dots) and the aligned explicit inverses."""

import math

import pytest
import torch

import gnopt
from gnopt.curvature.trace import forward_trace, subsample
from gnopt.gvp import quadratic_from_trace
from gnopt.layers import parse_model
from gnopt.linalg import FactoredFactors
from gnopt.numerics import all_finite, dot, norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_is_exact(dtype):
    t = torch.randn(37, 29, dtype=dtype)
    assert all_finite(t) and all_finite([t, t[:3]]) and all_finite()
    for bad in (math.nan, math.inf, -math.inf):
        u = t.clone()
        u[5, 7] = bad
        assert not all_finite(t, u)
        assert not all_finite([u])
    # +inf and -inf: the sum is NaN, still caught
    u = t.clone()
    u[0, 0], u[1, 1] = math.inf, -math.inf
    assert not all_finite(u)
    # huge finite values overflow the sum: the exact fallback must still say "finite"
    big = torch.full((4,), torch.finfo(dtype).max, dtype=dtype)
    assert not math.isfinite(float(big.sum()))
    assert all_finite(big)
    assert all_finite(torch.zeros(0)) and all_finite(torch.arange(5))  # empty and integer tensors
    z = torch.zeros(3, dtype=torch.complex64)
    assert all_finite(z)
    z[1] = complex(0.0, math.nan)  # NaN only in the imaginary part
    assert not all_finite(z)


def test_norm_and_dot_match_float64():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(50, 31, generator=g), torch.randn(7, generator=g)]
    b = [torch.randn(50, 31, generator=g), torch.randn(7, generator=g)]
    ref_n = math.sqrt(sum(float((x.double() ** 2).sum()) for x in a))
    ref_d = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))
    assert math.isclose(norm(a), ref_n, rel_tol=1e-6)
    assert math.isclose(float(dot(a, b)), ref_d, rel_tol=1e-5, abs_tol=1e-4)
    assert norm([]) == 0.0


@pytest.mark.parametrize("d_out,d_in", [(5, 3), (16, 17), (30, 251), (33, 16)])
def test_aligned_explicit_inverse_equals_cholesky_solve(d_out, d_in):
    """Eq. 36 by explicit, zero-padded inverses equals the triangular-solve path."""
    g = torch.Generator().manual_seed(d_out * d_in)

    def spd(n):
        A = torch.randn(n, n + 2, dtype=torch.float64, generator=g)
        return A @ A.T / n

    G, Q = spd(d_out), spd(d_in)
    V = torch.randn(d_out, d_in, dtype=torch.float64, generator=g)
    ref = FactoredFactors.from_factors(G, Q, 0.3).solve(V)
    fac = FactoredFactors.from_factors(G, Q, 0.3, explicit_inverse=True)
    assert fac.padded is not None and all(p.shape[0] % 16 == 0 for p in fac.padded)
    assert fac.G_factor.shape == (d_out, d_out) and fac.Q_factor.shape == (d_in, d_in)
    X = fac.solve(V)
    assert X.shape == V.shape
    torch.testing.assert_close(X, ref, rtol=1e-9, atol=1e-12)
    # explicit formula (G + √k/ω I)⁻¹ V (Q + ω√k I)⁻¹
    om, rk = float(fac.omega), math.sqrt(0.3)
    direct = torch.linalg.solve(G + rk / om * torch.eye(d_out, dtype=G.dtype), V) @ torch.linalg.inv(
        Q + om * rk * torch.eye(d_in, dtype=G.dtype))
    torch.testing.assert_close(X, direct, rtol=1e-8, atol=1e-10)


def test_subsample_is_the_first_examples_and_the_quadratic_uses_them():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4)).double()
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.rand(10, 4, dtype=torch.float64)
    net = parse_model(model)
    with torch.no_grad():
        tr = forward_trace(net, x)
        sub, ys = subsample(tr, y, 0.25)  # ⌈2.5⌉ = 3
        assert sub.output.shape[0] == 3 and torch.equal(ys, y[:3])
        assert subsample(tr, y, 1.0)[0] is tr
        vecs = [torch.randn(5, 7, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)]
        q = quadratic_from_trace(net, sub, ys, gnopt.get_loss("bce"), vecs)
    torch.testing.assert_close(q, gnopt.gn_quadratic(model, x[:3], y[:3], "bce", vecs))


def test_step_size_fraction_uses_part_of_the_batch():
    torch.manual_seed(1)
    x = torch.rand(40, 6, dtype=torch.float64)
    runs = {}
    for f in (1.0, 0.5):
        torch.manual_seed(2)
        m = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 6)).double()
        opt = gnopt.GaussNewton(m, "bce", "kfra", step_size_fraction=f)
        info = opt.step(x, x)
        runs[f] = info
        if f == 0.5:  # α* = −δᵀg / (δᵀḠ_{first half}δ + τ‖δ‖²)
            torch.manual_seed(2)
            m2 = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 6)).double()
            d = gnopt.GaussNewton(m2, "bce", "kfra").direction(x, x)
            dGd = float(gnopt.gn_quadratic(m2, x[:20], x[:20], "bce", d))
            assert math.isclose(info.extra["dGd"], dGd, rel_tol=1e-9)
    assert runs[1.0].extra["dGd"] != runs[0.5].extra["dGd"]
    with pytest.raises(ValueError, match="step_size_fraction"):
        gnopt.GaussNewton(m, "bce", step_size_fraction=0.0)


def test_float64_solves_for_a_float32_model_agree():
    x = torch.rand(64, 6)
    out = []
    for dt in (None, "float64"):
        torch.manual_seed(3)
        m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Sigmoid(), torch.nn.Linear(5, 6))
        opt = gnopt.GaussNewton(m, "bce", "kfra", solve_dtype=dt)
        d = opt.direction(x, x)
        assert all(t.dtype == torch.float32 for t in d)
        out.append(torch.cat([t.reshape(-1) for t in d]))
        assert opt.config()["solve_dtype"] == dt
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="solve_dtype"):
        gnopt.GaussNewton(m, "bce", solve_dtype="float77")


def test_is_diagonal_reads_every_off_diagonal_entry():
    from gnopt.numerics import is_diagonal

    for n in (1, 2, 5, 17):
        D = torch.diag(torch.arange(1.0, n + 1))
        assert is_diagonal(D)
        for i in range(n):
            for j in range(n):
                if i != j:
                    E = D.clone()
                    E[i, j] = 1e-30
                    assert not is_diagonal(E), (n, i, j)
    N = torch.diag(torch.ones(3))
    N[0, 2] = float("nan")
    assert not is_diagonal(N)
    assert not is_diagonal(torch.eye(4)[:, ::2].T[:, :2])  # not contiguous: dense path
    assert not is_diagonal(torch.eye(3).expand(2, 3, 3))  # batched: dense path


@pytest.mark.parametrize("which", ["G", "Q", "both"])
def test_diagonal_factor_is_inverted_elementwise_and_matches_cholesky(which):
    """A diagonal factor (the top G of KFRA/KFLR for mse/bce) skips its GEMM; eq. 36 unchanged."""
    g = torch.Generator().manual_seed(1)

    def spd(n):
        A = torch.randn(n, n + 2, dtype=torch.float64, generator=g)
        return A @ A.T / n

    def diag(n):
        return torch.diag(torch.rand(n, dtype=torch.float64, generator=g) + 0.1)

    G = diag(20) if which in ("G", "both") else spd(20)
    Q = diag(33) if which in ("Q", "both") else spd(33)
    V = torch.randn(20, 33, dtype=torch.float64, generator=g)
    ref = FactoredFactors.from_factors(G, Q, 0.05).solve(V)
    fac = FactoredFactors.from_factors(G, Q, 0.05, explicit_inverse=True)
    gd, qd = fac.diagonal
    assert (gd is not None) == (which in ("G", "both")) and (qd is not None) == (which in ("Q", "both"))
    assert (fac.padded[0] is None) == (gd is not None)
    torch.testing.assert_close(fac.solve(V), ref, rtol=1e-9, atol=1e-12)
    om, rk = float(fac.omega), math.sqrt(0.05)
    torch.testing.assert_close(fac.G_factor, torch.linalg.inv(G + rk / om * torch.eye(20, dtype=G.dtype)))
    # the float64 fallback of a float32 solve uses the dense fields and agrees
    fac32 = FactoredFactors.from_factors(G.float(), Q.float(), 0.05, explicit_inverse=True)
    torch.testing.assert_close(fac32._solve_in(V.float(), torch.float64), ref, rtol=1e-4, atol=1e-5)


def test_explicit_inverse_reads_only_the_lower_triangle():
    """Cholesky reads the lower triangle: garbage above the diagonal changes nothing."""
    g = torch.Generator().manual_seed(2)
    A = torch.randn(9, 12, dtype=torch.float64, generator=g)
    G = A @ A.T / 9
    Q = torch.eye(4, dtype=torch.float64) * 2
    Gu = G + torch.triu(torch.randn(9, 9, dtype=torch.float64, generator=g), 1)
    V = torch.randn(9, 4, dtype=torch.float64, generator=g)
    a = FactoredFactors.from_factors(G, Q, 0.1, explicit_inverse=True, omega=1.0).solve(V)
    b = FactoredFactors.from_factors(Gu, Q, 0.1, explicit_inverse=True, omega=1.0).solve(V)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
