"""The ladder of exact equalities for the curvature engine (DESIGN.md), in float64."""

import pytest
import torch
from torch import nn

import gnopt
from helpers import ACTS, LOSSES, batch, brute_gn_blocks, brute_hessian_blocks, no_hooks, out_dim, tiny_net

ALL_ACTS = list(ACTS)


def _close(a, b, tol=1e-9):
    assert a.shape == b.shape
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol * scale, (a - b).abs().max().item()


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ALL_ACTS)
def test_hessian_blocks_equal_torch_func_hessian(loss, act):
    """Eq. (7)-(10): the recursion gives the exact per-layer Hessian of the batch-mean loss."""
    k = out_dim(loss)
    model = tiny_net(act, out=k, seed=2)
    x, y = batch(loss, 5, 3, k)
    for got, ref in zip(gnopt.hessian_blocks(model, x, y, loss), brute_hessian_blocks(model, x, y, loss)):
        _close(got, ref)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ALL_ACTS)
def test_gauss_newton_blocks_equal_jacobian_products(loss, act):
    """Eq. (13)/(16): blocks of (1/N) Σ Jᵀ H_L J built with torch.func."""
    k = out_dim(loss)
    model = tiny_net(act, out=k, seed=3)
    x, y = batch(loss, 4, 3, k)
    for got, ref in zip(gnopt.gauss_newton_blocks(model, x, y, loss), brute_gn_blocks(model, x, y, loss)):
        _close(got, ref)


@pytest.mark.parametrize("bias", [True, False])
def test_blocks_with_and_without_bias_and_trailing_activation(bias):
    model = tiny_net("sigmoid", out=2, bias=bias, last_act=True)
    x, y = batch("mse", 3, 3, 2)
    for got, ref in zip(gnopt.hessian_blocks(model, x, y, "mse"), brute_hessian_blocks(model, x, y, "mse")):
        _close(got, ref)
    for got, ref in zip(gnopt.gauss_newton_blocks(model, x, y, "mse"), brute_gn_blocks(model, x, y, "mse")):
        _close(got, ref)


@pytest.mark.parametrize("loss", LOSSES)
def test_full_gauss_newton_matrix(loss):
    k = out_dim(loss)
    model = tiny_net("tanh", out=k)
    x, y = batch(loss, 4, 3, k)
    G = gnopt.gauss_newton_matrix(model, x, y, loss)
    blocks = gnopt.gauss_newton_blocks(model, x, y, loss)
    i = 0
    for b in blocks:
        n = b.shape[0]
        _close(G[i:i + n, i:i + n], b)
        i += n
    assert i == G.shape[0]
    _close(G, G.T)
    assert torch.linalg.eigvalsh(G).min() > -1e-10


@pytest.mark.parametrize("act", ["relu", "leaky", "identity"])
@pytest.mark.parametrize("loss", ["mse", "bce", "ce"])
def test_piecewise_linear_hessian_blocks_are_gn_blocks_and_psd(act, loss):
    """Section 3.3 and Lemma 1: f'' = 0 and PSD H_L ⇒ H_λ = G_λ ⪰ 0."""
    k = out_dim(loss)
    model = tiny_net(act, out=k, seed=5)
    x, y = batch(loss, 6, 3, k)
    for hb, gb in zip(gnopt.hessian_blocks(model, x, y, loss), gnopt.gauss_newton_blocks(model, x, y, loss)):
        _close(hb, gb)
        assert torch.linalg.eigvalsh(hb).min() > -1e-10


def test_sigmoid_net_hessian_differs_from_gn():
    model = tiny_net("sigmoid", out=3, seed=5)
    x, y = batch("mse", 6, 3, 3)
    hb = gnopt.hessian_blocks(model, x, y, "mse")
    gb = gnopt.gauss_newton_blocks(model, x, y, "mse")
    assert (hb[0] - gb[0]).abs().max() > 1e-4
    _close(hb[-1], gb[-1])  # the last layer has no transfer function after it: D_L = 0


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ALL_ACTS)
@pytest.mark.parametrize("method", ["kflr", "kfra"])
def test_kflr_kfra_exact_at_batch_size_one(loss, act, method):
    """App. C.4: with N = 1, the factorisation (20) and the recursion (26) are exact."""
    k = out_dim(loss)
    model = tiny_net(act, out=k, seed=7, last_act=(act == "sigmoid" and loss == "mse"))
    x, y = batch(loss, 1, 3, k, seed=4)
    for f, b in zip(gnopt.kronecker_factors(model, x, y, loss, method), gnopt.gauss_newton_blocks(model, x, y, loss)):
        _close(torch.kron(f.G, f.Q), b)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n", [2, 7])
def test_deep_linear_mse_all_agree(bias, n):
    """Linear transfer functions and H_L = I: 𝒢_λ is constant, so E[Q⊗𝒢] = E[Q]⊗𝒢 exactly."""
    model = tiny_net("identity", sizes=(3, 4, 5, 4), out=3, bias=bias, seed=11)
    x, y = batch("mse", n, 3, 3)
    exact = gnopt.gauss_newton_blocks(model, x, y, "mse")
    kflr = gnopt.kronecker_factors(model, x, y, "mse", "kflr")
    kfra = gnopt.kronecker_factors(model, x, y, "mse", "kfra")
    for a, b, e in zip(kflr, kfra, exact):
        _close(a.dense(), e)
        _close(b.dense(), e)


def test_kfra_differs_from_kflr_for_nonlinear_net_at_larger_batch():
    model = tiny_net("tanh", out=3, seed=1)
    x, y = batch("mse", 8, 3, 3)
    kflr = gnopt.kronecker_factors(model, x, y, "mse", "kflr")
    kfra = gnopt.kronecker_factors(model, x, y, "mse", "kfra")
    _close(kflr[-1].G, kfra[-1].G)  # the top factor is exact in both
    assert (kflr[0].G - kfra[0].G).abs().max() > 1e-6


@pytest.mark.parametrize("loss", ["mse", "bce", "ce"])
def test_kflr_equals_expected_preactivation_gn(loss):
    model = tiny_net("softplus", out=3, seed=2)
    x, y = batch(loss, 9, 3, 3)
    for f, e in zip(gnopt.kronecker_factors(model, x, y, loss, "kflr"), gnopt.expected_preactivation_gn(model, x, y, loss)):
        _close(f.G, e)


def test_kflr_chunking_does_not_change_result():
    model = tiny_net("tanh", out=5, seed=2)
    x, y = batch("bce", 6, 3, 5)
    a = gnopt.kronecker_factors(model, x, y, "bce", "kflr", chunk_size=1)
    b = gnopt.kronecker_factors(model, x, y, "bce", "kflr", chunk_size=100)
    for fa, fb in zip(a, b):
        _close(fa.G, fb.G, 1e-12)


@pytest.mark.parametrize("loss", ["mse", "bce", "ce"])
def test_kfac_approaches_kflr_as_samples_grow(loss):
    """For exponential families E[F_L] = H_L (App. C.2): the MC error shrinks like 1/√S."""
    model = tiny_net("tanh", out=3, seed=3)
    x, y = batch(loss, 5, 3, 3)
    ref = gnopt.kronecker_factors(model, x, y, loss, "kflr")

    def err(s, seed):
        g = torch.Generator().manual_seed(seed)
        f = gnopt.kronecker_factors(model, x, y, loss, "kfac", samples=s, generator=g)
        return max(((a.G - b.G).norm() / b.G.norm()).item() for a, b in zip(f, ref))

    e_small = sum(err(10, s) for s in range(3)) / 3
    e_large = sum(err(10000, s) for s in range(3)) / 3
    assert e_large < 0.1
    assert e_large < e_small / 5  # √1000 ≈ 31.6; a generous margin


def test_kfac_reproducible_with_generator_and_q_equal():
    model = tiny_net("relu", out=3)
    x, y = batch("ce", 5, 3, 3)
    a = gnopt.kronecker_factors(model, x, y, "ce", "kfac", generator=torch.Generator().manual_seed(0))
    b = gnopt.kronecker_factors(model, x, y, "ce", "kfac", generator=torch.Generator().manual_seed(0))
    c = gnopt.kronecker_factors(model, x, y, "ce", "kflr")
    for fa, fb, fc in zip(a, b, c):
        assert torch.equal(fa.G, fb.G)
        _close(fa.Q, fc.Q)


@pytest.mark.parametrize("method", ["kfra", "kflr", "kfac"])
@pytest.mark.parametrize("loss", LOSSES)
def test_factors_symmetric_psd(method, loss):
    k = out_dim(loss)
    model = tiny_net("elu", out=k, seed=4)
    x, y = batch(loss, 6, 3, k)
    for f in gnopt.kronecker_factors(model, x, y, loss, method, generator=torch.Generator().manual_seed(1)):
        for M in (f.Q, f.G):
            assert torch.equal(M, M.T)
            assert torch.linalg.eigvalsh(M).min() > -1e-10


def test_mixture_kfac_is_fisher_not_gauss_newton():
    """Eq. (27) is not an exponential family: KFAC's expectation (Fisher) differs from KFLR (GN)."""
    model = tiny_net("tanh", out=3, seed=8)
    x, y = batch("mixture", 4, 3, 3)
    ref = gnopt.kronecker_factors(model, x, y, "mixture", "kflr")
    kfac = gnopt.kronecker_factors(model, x, y, "mixture", "kfac", samples=20000, generator=torch.Generator().manual_seed(0))
    rel = ((kfac[-1].G - ref[-1].G).norm() / ref[-1].G.norm()).item()
    assert rel > 0.05


@pytest.mark.parametrize("method,samples", [("kflr", 1), ("kfac", 1), ("kfac", 2)])
@pytest.mark.parametrize("loss", ["bce", "mixture"])
def test_rank_bound_appendix_d(method, samples, loss):
    """rank(E[𝒢_λ]) ≤ rank(H_L)·N for KFLR and ≤ S·N for KFAC (App. D)."""
    k = 1 if loss == "bce" else 3
    model = tiny_net("leaky", sizes=(6, 20, 20), out=k, seed=9)
    n = 3
    x, y = batch(loss, n, 6, k)
    fs = gnopt.kronecker_factors(model, x, y, loss, method, samples=samples, generator=torch.Generator().manual_seed(2))
    bound = k * n if method == "kflr" else samples * n
    for f in fs:
        r = torch.linalg.matrix_rank(f.G, hermitian=True, rtol=1e-10).item()
        assert r <= bound
    # attained on the wide hidden layers (generic position); KFAC's S sampled gradients
    # per example lie in the K-dimensional output space, so it reaches min(S, K)·N
    # (for the mixture, the PSD projection and a binary y make the rank data-dependent)
    attained = min(k, samples) * n if method == "kfac" else bound
    if loss == "bce":
        assert torch.linalg.matrix_rank(fs[0].G, hermitian=True, rtol=1e-10).item() == min(attained, 20)


class Custom(nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize("bad,name", [
    (nn.Sequential(nn.Linear(3, 3), nn.Conv2d(1, 1, 1)), "Conv2d"),
    (nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1)), "Dropout"),
    (nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), "BatchNorm1d"),
    (nn.Sequential(nn.Linear(3, 3), Custom()), "Custom"),
    (nn.Linear(3, 3), "Linear"),
    (nn.Sequential(nn.ReLU()), "no nn.Linear"),
    (nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True)), "in-place"),
])
def test_unsupported_modules_raise_naming_them(bad, name):
    x, y = batch("mse", 2, 3, 3)
    for fn in (lambda: gnopt.kronecker_factors(bad, x, y, "mse"), lambda: gnopt.hessian_blocks(bad, x, y, "mse")):
        with pytest.raises(ValueError, match=name):
            fn()
    assert no_hooks(bad)


def test_bad_inputs_raise_clear_errors_and_leave_no_hooks():
    model = tiny_net("tanh", out=3)
    x, y = batch("mse", 4, 3, 3)
    cases = [
        (x[:, :2], y, "mse", "expects 3 features"),
        (x.unsqueeze(0), y, "mse", "shape"),
        (x, y[:3], "mse", "targets"),
        (x, y[:, :2], "mse", "do not match"),
        (torch.full_like(x, float("nan")), y, "mse", "NaN"),
        (x, torch.full_like(y, float("inf")), "mse", "NaN or infinite"),
        (x, torch.rand(4, 3, dtype=torch.float64), "ce", "integer class targets"),
        (x, torch.tensor([0, 1, 5, 2]), "ce", "must be in"),
        (x, y, "bce", r"in \[0, 1\]"),
        (x, torch.rand(4, 3, dtype=torch.float64), "nosuchloss", "unknown loss"),
        (x.long(), y, "mse", "floating point"),
    ]
    for xx, yy, loss, msg in cases:
        with pytest.raises(ValueError, match=msg):
            gnopt.kronecker_factors(model, xx, yy, loss, "kfra")
        assert no_hooks(model)
    with pytest.raises(ValueError, match="unknown curvature method"):
        gnopt.kronecker_factors(model, x, y, "mse", "kfxx")
    with pytest.raises(ValueError, match="samples"):
        gnopt.kronecker_factors(model, x, y, "mse", "kfac", samples=0)


def test_kfac_on_custom_loss_without_sampler_raises():
    loss = gnopt.CustomLoss(lambda h, y: ((h - y) ** 4).sum(), name="quartic")
    model = tiny_net("tanh", out=3)
    x, y = batch("mse", 4, 3, 3)
    with pytest.raises(ValueError, match="sampler"):
        gnopt.kronecker_factors(model, x, y, loss, "kfac")
    # but KFLR/KFRA work, with the PSD-projected output Hessian
    for f in gnopt.kronecker_factors(model, x, y, loss, "kflr"):
        assert torch.linalg.eigvalsh(f.G).min() > -1e-10


def test_no_hooks_after_calls():
    model = tiny_net("relu", out=3)
    x, y = batch("ce", 4, 3, 3)
    for m in ("kfra", "kflr", "kfac"):
        gnopt.kronecker_factors(model, x, y, "ce", m)
    gnopt.hessian_blocks(model, x, y, "ce")
    gnopt.gauss_newton_matrix(model, x, y, "ce")
    assert no_hooks(model)


def test_float32_model_gives_float32_factors():
    model = tiny_net("tanh", out=3).float()
    x, y = batch("bce", 4, 3, 3)
    fs = gnopt.kronecker_factors(model, x.float(), y.float(), "bce", "kfra")
    assert all(f.G.dtype == torch.float32 and f.Q.dtype == torch.float32 for f in fs)


@pytest.mark.parametrize("loss", ["mse", "bce", "ce", "mixture"])
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_kflr_with_rank_compression_and_diagonal_top_is_exact(loss, chunk):
    """A bottleneck (width 2 ≤ R/2) triggers the rank compression; results stay exact."""
    k = out_dim(loss, 8)
    model = tiny_net("sigmoid", sizes=(8, 6, 2, 6), out=k, seed=5)
    x, y = batch(loss, 7, 8, k)
    exact = gnopt.expected_preactivation_gn(model, x, y, loss)
    for f, e in zip(gnopt.kronecker_factors(model, x, y, loss, "kflr", chunk_size=chunk), exact):
        _close(f.G, e)


def test_kfac_compression_matches_uncompressed():
    from gnopt.curvature.kflr import chunked_sqrt_backward
    from gnopt.curvature.common import prepare

    model = tiny_net("tanh", sizes=(8, 6, 2, 6), out=8, seed=5)
    x, y = batch("bce", 5, 8, 8)
    net, lossfn, trace = prepare(model, x, y, "bce")
    g = lossfn.sample_grads(trace.output, 9, torch.Generator().manual_seed(0))
    a = chunked_sqrt_backward(net, trace, lambda i, j: g[i:j], 9, 1 / 9, 2, compress=True)
    b = chunked_sqrt_backward(net, trace, lambda i, j: g[i:j], 9, 1 / 9, None, compress=False)
    for ga, gb in zip(a, b):
        _close(ga, gb)


@pytest.mark.parametrize("d", [5, 300, 1001])
def test_symmetric_gram_equals_matmul(d):
    from gnopt.curvature.trace import gram

    a = torch.randn(40, d, dtype=torch.float64)
    g = gram(a)
    _close(g, a.T @ a, 1e-12)
    assert torch.equal(g, g.T)


@pytest.mark.parametrize("d", [7, 300, 700])
def test_symmetric_product_equals_matmul(d):
    """Wᵀ(GW) for symmetric G (KFRA's linear step, eq. 26) from the blocks on and above the
    diagonal: equal to the full product, exactly symmetric."""
    from gnopt.curvature.trace import symmetric_product

    g = torch.Generator().manual_seed(d)
    W = torch.randn(90, d, dtype=torch.float64, generator=g)
    A = torch.randn(90, 90, dtype=torch.float64, generator=g)
    G = A @ A.T
    p = symmetric_product(W, G @ W)
    _close(p, W.T @ G @ W, 1e-9)
    assert torch.equal(p, p.T)


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_kfra_factors_of_a_wide_net_are_exactly_symmetric(loss):
    """Widths ≥ 512 take the blocked symmetric products; KFRA's G is not symmetrised afterwards."""
    k = 520 if loss == "bce" else 6
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 600), nn.Sigmoid(), nn.Linear(600, k)).double()
    x, y = batch(loss, 9, 20, k)
    f = gnopt.kronecker_factors(model, x, y, loss, "kfra")
    for M in (f[0].G, f[0].Q, f[1].G, f[1].Q):
        assert torch.equal(M, M.T)
    for method in ("kflr", "kfac"):  # their G are symmetric products too (SquareRoot.factor)
        g = gnopt.kronecker_factors(model, x, y, loss, method, generator=torch.Generator().manual_seed(0))
        for M in (g[0].G, g[1].G):
            assert torch.equal(M, M.T)
    # eq. 26 densely for the hidden layer
    h = x @ model[0].weight.T + model[0].bias
    d1 = torch.sigmoid(h) * (1 - torch.sigmoid(h))
    top = f[1].G
    W = model[2].weight.detach()
    _close(f[0].G, (W.T @ top @ W) * (d1.T @ d1) / x.shape[0], 1e-10)


@pytest.mark.parametrize("loss", ["mse", "bce", "ce"])
def test_kfra_equals_dense_eq26_recursion(loss):
    """Eq. 26 written out densely: G_L = (1/N) Σ B H B, G_λ = (W_{λ+1}ᵀ G_{λ+1} W_{λ+1}) ⊙ (1/N) Σ f'f'ᵀ.

    For mse and bce the top is exactly diagonal and the engine carries it as a vector (one GEMM
    saved); ce has a dense top. Both must give the dense recursion's factors.
    """
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3)).double()
    x, y = batch(loss, 6, 3, 3, seed=5)
    Ws = [model[0].weight, model[2].weight, model[4].weight]
    h1 = model[0](x)
    a1 = torch.tanh(h1)
    h2 = model[2](a1)
    a2 = torch.sigmoid(h2)
    h3 = model[4](a2)
    H = gnopt.get_loss(loss).psd_hessian(h3, y)
    G3 = H.mean(0)
    f2 = a2 * (1 - a2)
    f1 = 1 - a1 ** 2
    G2 = (Ws[2].T @ G3 @ Ws[2]) * (f2.T @ f2 / 6)
    G1 = (Ws[1].T @ G2 @ Ws[1]) * (f1.T @ f1 / 6)
    facs = gnopt.kronecker_factors(model, x, y, loss, "kfra")
    for f, ref in zip(facs, [G1, G2, G3]):
        _close(f.G.detach(), ref.detach())
    assert gnopt.numerics.is_diagonal(facs[-1].G) == (loss != "ce")


@pytest.mark.parametrize("act", sorted(ACTS))
def test_trace_without_preacts_gives_the_same_gn_quantities(act):
    """forward_trace(keep_preacts=False) drops h_λ exactly where f' follows from the stage output
    (sigmoid, tanh, ReLU), and every Gauss-Newton quantity from it — KFRA/KFLR/KFAC factors (eq.
    23–26) and the GN-vector product (R-operator) — equals the one from the full trace; the
    Hessian's f'' needs h and says so."""
    from gnopt.curvature import factors_from_trace, forward_trace
    from gnopt.gvp import gvp_from_trace
    from gnopt.layers import parse_model
    from gnopt.losses import get_loss

    model = tiny_net(act, sizes=(4, 6, 5), out=3)
    x, y = batch("mse", 7, 4, 3)
    net = parse_model(model)
    loss = get_loss("mse")
    with torch.no_grad():
        full, lean = forward_trace(net, x), forward_trace(net, x, keep_preacts=False)
    dropped = [h is None for h in lean.preacts]
    assert dropped == [st.d1_from_output and not st.is_identity for st in net.stages]
    assert any(dropped) == (act in ("sigmoid", "tanh", "relu"))
    for method in ("kfra", "kflr", "kfac"):
        kw = {"generator": torch.Generator().manual_seed(3)} if method == "kfac" else {}
        a = factors_from_trace(net, full, y, loss, method, **kw)
        kw = {"generator": torch.Generator().manual_seed(3)} if method == "kfac" else {}
        b = factors_from_trace(net, lean, y, loss, method, **kw)
        for fa, fb in zip(a, b):
            assert torch.equal(fa.Q, fb.Q) and torch.equal(fa.G, fb.G), method
    vecs = [torch.randn(st.d_out, st.d_in + 1, dtype=torch.float64) for st in net.stages]
    for va, vb in zip(gvp_from_trace(net, full, y, loss, vecs), gvp_from_trace(net, lean, y, loss, vecs)):
        assert torch.equal(va, vb)
    if any(dropped):
        st = net.stages[dropped.index(True)]
        with pytest.raises(ValueError, match="pre-activation"):
            st.derivatives(None, second=True, a=lean.activation(st.index))


def test_kflr_compressed_factor_is_exactly_symmetric_and_exact():
    """Below a narrow layer the square root is compressed (eigh of per-example Gram matrices);
    the factor there is exactly symmetric and equals the uncompressed one."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 8), nn.Sigmoid(), nn.Linear(8, 40)).double()
    x, y = batch("mse", 7, 20, 40)
    from gnopt.curvature.common import prepare
    from gnopt.curvature.kflr import chunked_sqrt_backward

    net, lossfn, trace = prepare(model, x, y, "mse")

    h = trace.output
    args = (net, trace, lambda a, b: lossfn.sqrt_columns(h, y, a, b), lossfn.sqrt_rank(h), 1.0, None)
    kw = {"diagonal": lossfn.sqrt_diagonal(h, y)}
    with torch.no_grad():
        comp = chunked_sqrt_backward(*args, compress=True, **kw)
        full = chunked_sqrt_backward(*args, compress=False, **kw)
    for a, b in zip(comp, full):
        assert torch.equal(a, a.T)
        _close(a, b, 1e-10)
