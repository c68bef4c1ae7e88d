"""The optimiser of App. B, Hessian-free and first-order baselines."""

import copy
import io
import math

import pytest
import torch
from torch import nn

import gnopt
from gnopt.layers import parse_model
from gnopt.optim.damping import gamma_candidates, levenberg_marquardt, polyak_beta, reduction_ratio
from gnopt.params import flatten, layer_matrix, unflatten
from helpers import LOSSES, batch, no_hooks, out_dim, tiny_net


PAPER = {"factor_period": 1, "step_size_fraction": 1.0}  # Algorithm 1 as written (the defaults amortise)


def autoencoder(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3), nn.Linear(3, 8), nn.Sigmoid(), nn.Linear(8, 12))
    return m.to(dtype)


def ae_data(n=64, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g)
    x = torch.sigmoid(z @ torch.randn(3, 12, generator=g) * 2)
    return x.to(dtype)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def flat_grad(model, x, y, loss):
    net = parse_model(model)
    model.zero_grad()
    gnopt.get_loss(loss)(model(x), y).backward()
    return flatten([layer_matrix(st, st.linear.weight.grad, st.linear.bias.grad) for st in net.stages])


@pytest.mark.parametrize("loss", LOSSES)
def test_gn_vector_product_and_quadratic_equal_dense(loss):
    k = out_dim(loss)
    model = tiny_net("softplus", out=k, last_act=True)
    x, y = batch(loss, 5, 3, k)
    G = gnopt.gauss_newton_matrix(model, x, y, loss)
    net = parse_model(model)
    v = torch.randn(G.shape[0], dtype=torch.float64)
    gv = flatten(gnopt.gn_vector_product(model, x, y, loss, unflatten(net, v)))
    torch.testing.assert_close(gv, G @ v)
    torch.testing.assert_close(gnopt.gn_quadratic(model, x, y, loss, unflatten(net, v)), v @ G @ v)


@pytest.mark.parametrize("curvature", ["kfra", "kflr", "block"])
@pytest.mark.parametrize("damping", ["factored", "eigen"])
def test_step_size_is_minimiser_of_dense_quadratic(curvature, damping):
    """Eq. (39)-(41): α* = argmin_α f + α δᵀ∇f + ½α² δᵀ(Ḡ + (τ+η)I)δ, with Ḡ dense."""
    model = tiny_net("tanh", out=3)
    x, y = batch("bce", 6, 3, 3)
    opt = gnopt.GaussNewton(model, "bce", curvature, damping=damping, tau=0.3, gamma=0.1, weight_decay=0.01,
                            T_tau=100, T_gamma=100, **PAPER)
    net = parse_model(model)
    theta0 = flatten([layer_matrix(st).detach() for st in net.stages])
    g = flat_grad(model, x, y, "bce") + 0.01 * theta0
    G = gnopt.gauss_newton_matrix(model, x, y, "bce")
    d = flatten(opt.direction(x, y))
    C = G + (0.3 + 0.01) * torch.eye(G.shape[0], dtype=G.dtype)
    alpha = -(d @ g) / (d @ C @ d)
    info = opt.step(x, y)
    assert not info.rejected
    assert math.isclose(info.alpha, alpha.item(), rel_tol=1e-9)
    theta1 = flatten([layer_matrix(st).detach() for st in net.stages])
    torch.testing.assert_close(theta1, theta0 + alpha * d)
    # the reported model change is q(α d) − q(0)
    assert math.isclose(info.model_decrease, (alpha * d @ g + 0.5 * alpha**2 * d @ C @ d).item(), rel_tol=1e-9)


@pytest.mark.parametrize("damping", ["eigen", "factored"])
def test_one_kflr_step_solves_linear_least_squares(damping):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3)).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randn(40, 3, dtype=torch.float64)
    opt = gnopt.GaussNewton(model, "mse", "kflr", damping=damping, tau=1e-20, gamma=1e-20, tau_min=0, gamma_min=0,
                            T_tau=100, T_gamma=100, **PAPER)
    info = opt.step(x, y)
    X = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(X, y).solution.T  # (3, 6) = [W | b]
    torch.testing.assert_close(layer_matrix(parse_model(model).stages[0]).detach(), sol, atol=1e-8, rtol=1e-8)
    assert math.isclose(info.alpha, 1.0, rel_tol=1e-8)


def test_levenberg_marquardt_rule_and_ratio():
    assert levenberg_marquardt(1.0, 0.9, 0.5) == 0.5
    assert levenberg_marquardt(1.0, 0.5, 0.5) == 2.0
    assert levenberg_marquardt(1.0, -3.0, 0.5) == 2.0
    assert levenberg_marquardt(1.0, float("nan"), 0.5) == 2.0
    assert levenberg_marquardt(1.0, 0.5, 0.5, low=0.25, high=0.75) == 1.0  # Martens' dead band
    assert reduction_ratio(0.5, 1.0, -0.5) == 1.0
    assert reduction_ratio(float("nan"), 1.0, -0.5) == -math.inf
    assert list(gamma_candidates(1.0, 0.5)) == [0.5, 1.0, 2.0]
    assert [polyak_beta(t) for t in (1, 2, 4, 100)] == [0.0, 0.5, 0.75, 0.95]


def test_tau_moves_with_rho_in_training():
    model = autoencoder()
    x = ae_data()
    opt = gnopt.GaussNewton(model, "bce", "kfra", T_tau=1)
    for _ in range(15):
        tau = opt.tau
        info = opt.step(x, x)
        assert info.rho is not None
        if info.rho > 0.75:
            assert info.tau == pytest.approx(tau * opt.omega_tau)
        else:
            assert info.tau == pytest.approx(tau / opt.omega_tau)


@pytest.mark.parametrize("fraction,eta", [(0.25, 0.0), (0.4, 1e-2), (1.0, 1e-2)])
def test_rho_is_the_reduction_ratio_on_the_step_size_rows(fraction, eta):
    """ρ (eq. 42) by brute force: with δᵀḠδ measured on the first ⌈fN⌉ rows, the quadratic
    model's slope, curvature and the actual change of the objective are all taken on those
    rows (f = 1: the whole batch, the paper's ρ)."""
    model = autoencoder()
    x = ae_data(64)
    opt = gnopt.GaussNewton(model, "bce", "kfra", T_tau=1, step_size_fraction=fraction, weight_decay=eta,
                            step_guard=None)
    for _ in range(3):
        opt.step(x, x)
    m = math.ceil(fraction * 64)
    xr = x[:m]

    def objective(mod):
        return gnopt.losses.get_loss("bce")(mod(xr), xr) + 0.5 * eta * sum((p ** 2).sum() for p in mod.parameters())

    before = copy.deepcopy(model)
    tau = opt.tau
    info = opt.step(x, x)
    assert not info.rejected
    step = [a.detach() - b.detach() for a, b in zip(model.parameters(), before.parameters())]
    f0 = objective(before)
    slope = sum((g * d).sum() for g, d in zip(torch.autograd.grad(f0, list(before.parameters())), step))
    with torch.no_grad():
        dmats = [torch.cat([s_w, s_b[:, None]], 1) for s_w, s_b in zip(step[0::2], step[1::2])]
        curv = gnopt.gn_quadratic(before, xr, xr, "bce", dmats) + (tau + eta) * sum((d ** 2).sum() for d in step)
        expected = (objective(model) - f0) / (slope + 0.5 * curv)
    assert info.rho == pytest.approx(float(expected), rel=1e-8)


def test_gamma_picks_best_of_three_candidates():
    model = autoencoder(1)
    x = ae_data(seed=1)
    opt = gnopt.GaussNewton(model, "bce", "kfra", T_gamma=3, T_tau=1000)
    opt.step(x, x)
    opt.step(x, x)
    changes = {}
    for g in gamma_candidates(opt.gamma, opt.omega_gamma):
        probe = copy.deepcopy(opt)
        probe.gamma, probe.T_gamma = g, 1000
        changes[g] = probe.step(x, x).model_decrease
    info = opt.step(x, x)
    best = min(changes, key=changes.get)
    assert info.gamma == best
    assert info.model_decrease == pytest.approx(changes[best], rel=1e-9)
    assert len(set(changes.values())) == 3


def test_polyak_average_follows_beta():
    model = autoencoder()
    x = ae_data()
    opt = gnopt.GaussNewton(model, "bce", "kfra")
    seen = []
    for _ in range(4):
        opt.step(x, x)
        seen.append(params_of(model))
    with opt.averaged():
        avg = params_of(model)
    for a, *ps in zip(avg, *seen):
        torch.testing.assert_close(a, sum(ps) / 4)  # β_t = 1 − 1/t: the exact mean for t ≤ 20
    for p, q in zip(params_of(model), seen[-1]):
        assert torch.equal(p, q)  # restored after the block
    for _ in range(30):
        opt.step(x, x)
    # beyond t = 20 the coefficient is capped at 0.95
    assert polyak_beta(opt.accepted) == 0.95


@pytest.mark.parametrize("name", ["kfra", "kflr", "kfac", "block", "hf", "adam"])
@pytest.mark.parametrize("bad", ["nan_x", "inf_y", "inf_x"])
def test_bad_batches_are_rejected_and_leave_parameters(name, bad):
    model = autoencoder()
    x = ae_data()
    opt = gnopt.make_optimizer(name, model, "mse")
    opt.step(x, x)
    before = params_of(model)
    xb, yb = x.clone(), x.clone()
    if bad == "nan_x":
        xb[3, 2] = float("nan")
    elif bad == "inf_y":
        yb[0, 0] = float("inf")
    else:
        xb[0, 0] = float("inf")
    info = opt.step(xb, yb)
    assert info.rejected and info.reason
    for p, q in zip(params_of(model), before):
        assert torch.equal(p, q)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if hasattr(opt, "tau"):
        assert info.tau > 0
    info = opt.step(x, x)
    assert not info.rejected


def test_rejection_raises_damping_and_failed_curvature_is_rejected(monkeypatch):
    model = autoencoder()
    x = ae_data()
    opt = gnopt.GaussNewton(model, "bce", "kfra", factor_period=1)
    opt.step(x, x)
    tau, gamma = opt.tau, opt.gamma
    before = params_of(model)

    def broken(trace, y, gen):
        raise gnopt.linalg.LinalgFailure("injected")
    monkeypatch.setattr(opt.pre, "estimate", broken)
    info = opt.step(x, x)
    assert info.rejected and "injected" in info.reason
    assert opt.tau > tau and opt.gamma > gamma
    for p, q in zip(params_of(model), before):
        assert torch.equal(p, q)


@pytest.mark.parametrize("opts", [
    dict(name="kfra"), dict(name="kflr"), dict(name="kfac"), dict(name="block"),
    dict(name="kfra", damping="eigen"), dict(name="kfac", curvature_ema=0.9), dict(name="hf"),
])
def test_loss_falls_on_small_autoencoder(opts):
    opts = dict(opts)
    model = autoencoder(2)
    x = ae_data(256, seed=2)
    opt = gnopt.make_optimizer(opts.pop("name"), model, "bce", **opts)
    loss0 = gnopt.get_loss("bce")(model(x), x).item()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        idx = torch.randperm(256, generator=g)[:64]
        info = opt.step(x[idx], x[idx])
        assert not info.rejected, info.reason
    loss1 = gnopt.get_loss("bce")(model(x), x).item()
    assert loss1 < loss0 - 0.1 * (loss0 - 6.0)  # at least 10% of the way to a good fit
    assert no_hooks(model)


def _run(name, steps, sd=None, model_sd=None, **opts):
    model = autoencoder(3)
    if model_sd is not None:
        model.load_state_dict(model_sd)
    opt = gnopt.make_optimizer(name, model, "bce", **opts)
    if sd is not None:
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        opt.load_state_dict(torch.load(buf, weights_only=False))
    x = ae_data(200, seed=4)
    start = 0 if sd is None else sd.get("step", 0)
    infos = []
    for t in range(start, start + steps):
        i = (t * 37) % 150
        infos.append(opt.step(x[i:i + 50], x[i:i + 50]).as_dict())
    return model, opt, infos


@pytest.mark.parametrize("name,opts", [
    ("kfra", {}), ("kflr", {"damping": "eigen"}), ("kfac", {"curvature_ema": 0.9}), ("block", {}),
    ("kfra", {"factor_period": 3, "T_tau": 2, "T_gamma": 3}), ("hf", {}), ("adam", {"decay_period": 2}),
])
def test_state_dict_resume_is_bit_identical(name, opts):
    m_full, _, infos_full = _run(name, 8, **opts)
    m_half, opt_half, infos_a = _run(name, 4, **opts)
    sd = opt_half.state_dict()
    m_res, _, infos_b = _run(name, 4, sd=sd, model_sd=copy.deepcopy(m_half.state_dict()), **opts)
    for p, q in zip(m_full.parameters(), m_res.parameters()):
        assert torch.equal(p, q)
    assert infos_full == infos_a + infos_b


def test_loading_state_for_another_model_raises():
    opt = gnopt.GaussNewton(autoencoder(), "bce", "kfra")
    opt.step(ae_data(), ae_data())
    other = gnopt.GaussNewton(nn.Sequential(nn.Linear(12, 5), nn.Linear(5, 12)).double(), "bce", "kfra")
    with pytest.raises(ValueError, match="layers"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="curvature"):
        gnopt.GaussNewton(autoencoder(), "bce", "kflr").load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="HessianFree"):
        gnopt.HessianFree(autoencoder(), "bce").load_state_dict(opt.state_dict())


def test_bad_options_raise():
    m = autoencoder()
    with pytest.raises(ValueError, match="curvature"):
        gnopt.GaussNewton(m, "bce", "kfxx")
    with pytest.raises(ValueError, match="damping"):
        gnopt.GaussNewton(m, "bce", damping="cholesky")
    with pytest.raises(ValueError, match="optimiser"):
        gnopt.make_optimizer("lbfgs", m, "bce")
    with pytest.raises(ValueError, match="Conv2d"):
        gnopt.GaussNewton(nn.Sequential(nn.Conv2d(1, 1, 1)), "bce")
    opt = gnopt.GaussNewton(m, "bce")
    with pytest.raises(ValueError, match="shape"):
        opt.step(torch.zeros(4, 5, dtype=torch.float64), torch.zeros(4, 12, dtype=torch.float64))


def test_first_order_halves_learning_rate():
    opt = gnopt.FirstOrder(autoencoder(), "bce", "sgd", lr=0.5, decay_period=3)
    x = ae_data()
    lrs = [opt.step(x, x).alpha for _ in range(7)]
    assert lrs == [0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]


def test_explicit_inverse_gives_the_same_steps():
    x = ae_data()
    runs = []
    for ex in (False, True):
        model = autoencoder(5)
        opt = gnopt.GaussNewton(model, "bce", "kfra", factor_period=3, explicit_inverse=ex)
        for _ in range(6):
            opt.step(x, x)
        runs.append(params_of(model))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-7)


def test_default_amortises_factors_and_subsamples_the_step_size():
    """Defaults: factors refreshed every 10th update, δᵀḠδ on the first quarter of the batch."""
    x = ae_data(64)
    opt = gnopt.GaussNewton(autoencoder(6), "bce", "kfra")
    assert opt.factor_period == 10 and opt.step_size_fraction == 0.25
    refreshed = [opt.step(x, x).extra["refreshed"] for _ in range(21)]
    # the first step, then every 10th: the γ search (every T_γ = 20th) falls on a refresh
    assert [t + 1 for t, r in enumerate(refreshed) if r] == [1, 10, 20]
    m = autoencoder(6)
    d = gnopt.GaussNewton(m, "bce", "kfra").direction(x, x)
    info = gnopt.GaussNewton(m, "bce", "kfra").step(x, x)
    assert math.isclose(info.extra["dGd"], float(gnopt.gn_quadratic(autoencoder(6), x[:16], x[:16], "bce", d)),
                        rel_tol=1e-9)


def _steps(opt, x, n):
    return [opt.step(x[(t * 7) % 32:(t * 7) % 32 + 32], x[(t * 7) % 32:(t * 7) % 32 + 32]) for t in range(n)]


@pytest.mark.parametrize("opts,keeps", [
    ({}, False),                                         # factors every 10, γ search every 20
    ({"factor_period": 3, "T_gamma": 4}, True),          # a γ search between refreshes needs G and Q
    ({"factor_period": 3, "T_gamma": 4, "damping": "eigen"}, False),  # eigenbases serve every γ
    ({"curvature_ema": 0.5}, True),                      # the moving average needs the old factors
])
def test_factors_are_freed_after_a_refresh_unless_needed(opts, keeps):
    """Peak memory: only the decompositions outlive a refresh step when nothing needs the
    factors before the next refresh — and the updates are bit-identical to keeping them."""
    x = ae_data(64)
    runs = []
    for force_keep in (False, True):
        model = autoencoder(6)
        opt = gnopt.GaussNewton(model, "bce", "kfra", **opts)
        if force_keep:
            opt._keeps_factors = lambda: True
        infos = _steps(opt, x, 21)  # a γ search at step 20
        assert not any(i.rejected for i in infos)
        if not force_keep:
            assert (opt.pre.factors is not None) == keeps
            assert opt.pre._cache  # the decompositions for the current damping
        runs.append((params_of(model), [i.as_dict() for i in infos]))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[1][0]))


def test_a_rejection_after_the_factors_were_freed_refreshes_the_curvature():
    """γ is raised by a rejection; with only the old damping's decompositions kept, the next
    step estimates the curvature afresh (instead of failing or reusing the wrong damping)."""
    x = ae_data(64)
    opt = gnopt.GaussNewton(autoencoder(6), "bce", "kfra")
    _steps(opt, x, 3)
    assert opt.pre.factors is None
    bad = x.clone()
    bad[0, 0] = float("nan")
    assert opt.step(bad, bad).rejected
    info = opt.step(x, x)
    assert not info.rejected and info.extra["refreshed"] == 1.0
    assert opt.step(x, x).extra["refreshed"] == 0.0


def test_a_gamma_search_off_the_refresh_schedule_after_the_factors_were_freed_refreshes():
    """T_γ changed mid-run so that a γ search falls between refreshes: the search needs the
    factors, which were freed, so that update estimates them afresh (no crash, no stale γ)."""
    x = ae_data(64)
    opt = gnopt.GaussNewton(autoencoder(6), "bce", "kfra")
    _steps(opt, x, 3)
    assert opt.pre.factors is None
    opt.T_gamma = 4
    info = opt.step(x, x)  # update 4: a γ search, not a refresh by the schedule
    assert not info.rejected and info.extra["refreshed"] == 1.0
    assert opt.pre.factors is not None  # 10 does not divide 4: now they are kept
    assert not opt.step(x, x).rejected


def test_an_update_that_would_overflow_is_rejected_and_leaves_parameters_untouched():
    """No NaN/Inf is ever written into the parameters: the sums are checked before the write."""
    model = autoencoder(dtype=torch.float32)
    x = ae_data(dtype=torch.float32)
    y = x
    opt = gnopt.make_optimizer("kfra", model, "bce", step_guard=None)  # the guard's own path: test_step_guard_*
    opt.step(x, y)
    before = [p.detach().clone() for p in model.parameters()]
    huge = [torch.full_like(d, 3e38) for d in opt.layer_params()]
    assert not opt.try_add_to_params(huge, 10.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    orig = opt._candidate
    opt._candidate = lambda *a, **k: (huge, 10.0, -1.0, 1.0, -0.2, 0.02, None)
    info = opt.step(x, y)
    assert info.rejected and "non-finite parameters" in info.reason
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt._candidate = orig
    small = [torch.full_like(d, 0.5) for d in opt.layer_params()]
    assert opt.try_add_to_params(small, 0.1)
    for a, p in zip(before, model.parameters()):
        torch.testing.assert_close(p.detach(), a + 0.05)


def test_loading_a_state_dict_restores_its_hyper_parameters():
    """Like torch.optim: the saved options win, so a resume after a change of defaults is exact."""
    opts = dict(factor_period=3, T_tau=2, T_gamma=4, step_size_fraction=0.5, step_guard=None,
                weight_decay=1e-3, damping="eigen", curvature_ema=0.5)
    m_full, _, infos_full = _run("kfra", 8, **opts)
    m_half, opt_half, infos_a = _run("kfra", 4, **opts)
    sd = opt_half.state_dict()
    # resumed with gnopt's defaults for everything
    m_res, opt_res, infos_b = _run("kfra", 4, sd=sd, model_sd=copy.deepcopy(m_half.state_dict()))
    assert opt_res.factor_period == 3 and opt_res.T_gamma == 4 and opt_res.step_guard is None
    assert opt_res.pre.damping == "eigen" and opt_res.pre.ema == 0.5 and opt_res.weight_decay == 1e-3
    assert infos_full == infos_a + infos_b
    for p, q in zip(m_full.parameters(), m_res.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("value,scale,accepted", [
    (0.5, 0.1, True),        # far from overflow
    (1e38, 1.0, True),       # near the limit: 1e38 + 1e38 stays finite
    (3e38, 10.0, False),     # overflows
    (float("nan"), 1.0, False),
    (1.0, float("inf"), False),
])
def test_try_add_to_params_writes_only_finite_sums(value, scale, accepted):
    model = autoencoder(dtype=torch.float32)
    opt = gnopt.make_optimizer("kfra", model, "bce")
    before = params_of(model)
    delta = [torch.full_like(d, value) for d in opt.layer_params()]
    assert opt.try_add_to_params(delta, scale) is accepted
    after = params_of(model)
    if accepted:
        for a, p in zip(before, after):
            assert torch.equal(p, torch.add(a, torch.full_like(a, value), alpha=scale))  # the same kernel
    else:
        assert all(torch.equal(a, p) for a, p in zip(before, after))


def test_gamma_search_holds_one_direction_at_a_time(monkeypatch):
    """Peak memory of the greedy γ search (B.3.2): when a candidate's direction is computed, no
    earlier candidate's direction is alive — challengers' directions are dropped once their
    model change is known, and the held candidate (cached decompositions) comes last."""
    import gc
    import weakref

    from gnopt.optim.gauss_newton import GaussNewton

    model = tiny_net("sigmoid", sizes=(6, 8, 5), out=4)
    x, y = batch("bce", 32, 6, 4)
    opt = gnopt.make_optimizer("kfra", model, "bce", T_gamma=2, factor_period=2)
    orig = GaussNewton._candidate
    refs, alive_at_call = [], []

    def spy(self, *a, **kw):
        gc.collect()
        alive_at_call.append(sum(r() is not None for r in refs))
        out = orig(self, *a, **kw)
        refs.append(weakref.ref(out[0][0]))
        return out

    monkeypatch.setattr(GaussNewton, "_candidate", spy)
    for _ in range(8):
        refs.clear()
        opt.step(x, y)
    assert len(alive_at_call) > 8  # γ searches ran (three candidates every other update)
    assert max(alive_at_call) == 0


SCHEDULES = {
    "lean": dict(T_gamma=3, factor_period=3),  # factors die with the step: every solve transient
    "lean-every-step": dict(T_gamma=3, factor_period=1),  # ... and no decompositions outlive it
    "kept-factors": dict(T_gamma=3, factor_period=3, curvature_ema=0.5),  # the held candidate's are kept
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("damping", ["factored", "eigen"])
@pytest.mark.parametrize("winner", [0, 1, 2])
def test_gamma_search_winner_update_equals_a_plain_step_with_that_gamma(monkeypatch, winner, damping, schedule):
    """Whichever of the three candidates {ω_γγ, γ, γ/ω_γ} wins the γ search (B.3.2; forced here),
    the update — with the winner's direction rebuilt after the search when it was a challenger,
    its decompositions made again when later updates need them — is bit for bit the update of a
    step at that γ without a search; and so are the next updates, which reuse them."""
    from gnopt.optim.gauss_newton import GaussNewton

    model = tiny_net("tanh", sizes=(5, 7, 6), out=4)
    x, y = batch("mse", 24, 5, 4)
    opt = gnopt.make_optimizer("kfra", model, "mse", T_tau=1000, damping=damping, **SCHEDULES[schedule])
    opt.step(x, y)
    opt.step(x, y)  # the next step, t = 3, refreshes the factors and searches γ
    gammas = list(gamma_candidates(opt.gamma, opt.omega_gamma))
    probe = copy.deepcopy(opt)
    probe.gamma, probe.T_gamma = gammas[winner], 1000
    expected = probe.step(x, y)
    orig = GaussNewton._candidate

    def rigged(self, factors, cache, grads, rows, gamma, *a, **kw):
        out = orig(self, factors, cache, grads, rows, gamma, *a, **kw)
        if gamma != gammas[winner]:
            out = out[:2] + (abs(out[2]) + 1.0,) + out[3:]  # a model change no better than 0
        return out

    monkeypatch.setattr(GaussNewton, "_candidate", rigged)
    info = opt.step(x, y)
    assert info.gamma == gammas[winner] and info.model_decrease == expected.model_decrease
    assert info.alpha == expected.alpha and info.update_norm == expected.update_norm
    for p, q in zip(opt.layer_params(), probe.layer_params()):
        assert torch.equal(p, q)
    monkeypatch.setattr(GaussNewton, "_candidate", orig)
    for _ in range(2):  # updates 4 and 5 solve with the decompositions kept at update 3 (or refresh)
        a, b = opt.step(x, y), probe.step(x, y)
        assert a.alpha == b.alpha and a.extra["refreshed"] == b.extra["refreshed"]
    for p, q in zip(opt.layer_params(), probe.layer_params()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("T_gamma", [2, 4])
def test_lean_schedule_never_holds_all_factors_and_decompositions_together(monkeypatch, T_gamma):
    """Peak memory with the default kind of schedule (``factor_period`` divides ``T_gamma``, no
    moving average: the factors die with their refresh step). Whenever a damped factor pair is
    decomposed — γ-search candidates (built, applied and freed a layer at a time), the winner's
    decompositions kept for the next updates, a refresh outside a search — the layers whose
    factors are still alive plus the decompositions alive number at most the layers: a layer's
    factors are released as soon as its kept decompositions exist. (The earlier search kept
    the held candidate's decompositions next to all the factors: up to twice the layers.)"""
    import gc
    import weakref

    from gnopt.linalg import FactoredFactors
    from gnopt.optim.preconditioner import Preconditioner

    model = tiny_net("sigmoid", sizes=(6, 8, 5), out=4)
    x, y = batch("bce", 32, 6, 4)
    opt = gnopt.make_optimizer("kfra", model, "bce", T_gamma=T_gamma, factor_period=2, T_tau=1000)
    layers = len(opt.net.stages)
    factor_refs: list = []
    decomposition_refs: list = []
    counts = []
    orig_estimate, orig_from = Preconditioner.estimate, FactoredFactors.from_factors.__func__

    def estimate(self, *a, **kw):
        new = orig_estimate(self, *a, **kw)
        factor_refs[:] = [[weakref.ref(m) for m in f] for f in new]
        return new

    def from_factors(cls, *a, **kw):
        gc.collect()
        alive_factors = sum(any(r() is not None for r in f) for f in factor_refs)
        alive_decompositions = sum(r() is not None for r in decomposition_refs)
        counts.append(alive_factors + alive_decompositions)
        out = orig_from(cls, *a, **kw)
        decomposition_refs.append(weakref.ref(out))
        return out

    monkeypatch.setattr(Preconditioner, "estimate", estimate)
    monkeypatch.setattr(FactoredFactors, "from_factors", classmethod(from_factors))
    infos = [opt.step(x, y) for _ in range(8)]
    assert not any(i.rejected for i in infos)
    searches = 8 // T_gamma
    assert len(counts) >= layers * (4 * searches + (8 // 2 - searches))  # three candidates + the winner's
    assert max(counts) <= layers


@pytest.mark.parametrize("position", [0, 1, 2])
def test_gamma_search_keeps_the_decompositions_of_the_last_winning_position(monkeypatch, position):
    """Cost of the one-direction γ search: the guess (evaluated last, its direction kept) is the
    candidate in the position that won the last search, so when γ keeps moving the same way (or
    stays) no winner's direction is rebuilt — three directions per search; only a changed
    position costs a fourth."""
    from gnopt.optim.gauss_newton import GaussNewton

    model = tiny_net("tanh", sizes=(5, 7, 6), out=4)
    x, y = batch("mse", 24, 5, 4)
    opt = gnopt.make_optimizer("kfra", model, "mse", T_gamma=2, factor_period=2, T_tau=1000)
    orig_candidate, orig_direction = GaussNewton._candidate, GaussNewton._direction
    calls = []

    def rigged(self, factors, cache, grads, rows, gamma, *a, **kw):
        out = orig_candidate(self, factors, cache, grads, rows, gamma, *a, **kw)
        wanted = gamma_candidates(self.gamma, self.omega_gamma, *self.gamma_bounds)[position]
        if gamma != wanted:
            out = out[:2] + (abs(out[2]) + 1.0,) + out[3:]
        return out

    def counted(self, *a, **kw):
        calls.append(self.step_count)
        return orig_direction(self, *a, **kw)

    monkeypatch.setattr(GaussNewton, "_candidate", rigged)
    monkeypatch.setattr(GaussNewton, "_direction", counted)
    gammas = []
    for _ in range(8):
        gammas.append(opt.step(x, y).gamma)
    per_search = [calls.count(t) for t in (2, 4, 6, 8)]
    first = 3 if position == 0 else 4  # the first guess is the smaller γ
    assert per_search == [first, 3, 3, 3]
    assert len(set(gammas[1::2])) == (1 if position == 1 else 4)


def test_step_size_check_uses_the_whole_batch_when_the_rows_misrepresent_it():
    """``step_size_check``: when the step-size rows' mean loss is far from the minibatch's
    (here the first quarter is fitted exactly, the rest is not), δ̃ᵀḠδ̃ (eq. 41) and ρ (eq. 42)
    are measured on the whole batch — the update equals f = 1's bit for bit; with
    representative rows nothing changes (equal to the check switched off)."""
    net0 = tiny_net("tanh", sizes=(4, 6), out=3)
    x, _ = batch("mse", 40, 4, 3)
    with torch.no_grad():
        y = net0(x).clone()
    y[10:] += 3.0  # rows 0..9 (the first ⌈N/4⌉) have zero loss, the others 13.5 each (mean 10.1)
    common = dict(T_tau=1, T_gamma=2, factor_period=2)

    def run(steps, yy, **kw):
        model = copy.deepcopy(net0)
        opt = gnopt.make_optimizer("kfra", model, "mse", **common, **kw)
        infos = [opt.step(x, yy) for _ in range(steps)]
        return [p.detach().clone() for p in model.parameters()], infos

    full, _ = run(1, y, step_size_fraction=1.0)
    checked, infos = run(1, y, step_size_fraction=0.25)  # the default c = 0.1 fires: 0 vs 10.1
    assert infos[0].extra.get("full_rows") == 1.0
    assert all(torch.equal(a, b) for a, b in zip(full, checked))
    unchecked, infos = run(1, y, step_size_fraction=0.25, step_size_check=None)
    assert "full_rows" not in infos[0].extra
    assert not all(torch.equal(a, b) for a, b in zip(full, unchecked))
    # firing at every step (ρ, the γ search, refreshes and reused decompositions): f = 1's run
    full, _ = run(6, y, step_size_fraction=1.0)
    checked, infos = run(6, y, step_size_fraction=0.25, step_size_check=1e-12)
    assert all(i.extra.get("full_rows") == 1.0 for i in infos)
    assert all(torch.equal(a, b) for a, b in zip(full, checked))
    x, y_even = batch("mse", 4000, 4, 3)  # random targets: the quarter's loss within ~2 % of the batch's
    a, infos = run(4, y_even, step_size_fraction=0.25)
    b, _ = run(4, y_even, step_size_fraction=0.25, step_size_check=None)
    assert all(i.extra["rows_loss_deviation"] < 0.1 for i in infos)
    assert not any(i.extra.get("full_rows") for i in infos)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="step_size_check"):
        gnopt.make_optimizer("kfra", copy.deepcopy(net0), "mse", step_size_check=0.0)


def test_loading_state_with_non_finite_curvature_raises():
    """The solvers trust committed factors (one finiteness pass per estimate, not one per
    damping tried), so a checkpoint's factors are checked when it is loaded."""
    opt = gnopt.GaussNewton(autoencoder(), "bce", "kfra", curvature_ema=0.5)
    opt.step(ae_data(), ae_data())
    sd = copy.deepcopy(opt.state_dict())
    sd["curvature_state"]["factors"][1][0][0, 0] = float("inf")
    with pytest.raises(ValueError, match="layer 1 contains NaN or Inf"):
        gnopt.GaussNewton(autoencoder(), "bce", "kfra", curvature_ema=0.5).load_state_dict(sd)


def test_averaged_curvature_is_checked_and_narrowing_solves_check_the_factors():
    from gnopt.linalg import LinalgFailure
    from gnopt.optim.preconditioner import Preconditioner

    opt = gnopt.GaussNewton(autoencoder(), "bce", "kfra", curvature_ema=0.5)
    opt.step(ae_data(), ae_data())
    pre = opt.pre
    bad = [[m.clone() for m in f] for f in pre.factors]
    bad[2][1][0, 0] = float("nan")
    with pytest.raises(LinalgFailure, match="averaged curvature of layer 2"):
        pre.blend(bad)
    # a float64 factor too large for float32: the float32 solver must see the overflow
    p32 = Preconditioner(pre.net, pre.loss, "kfra", "factored", solve_dtype=torch.float32)
    huge = [[m.clone() for m in f] for f in pre.factors]
    huge[0][1][0, 0] = 1e300
    with pytest.raises(LinalgFailure, match="NaN or Inf"):
        p32.solver(huge, 0.1, {})
    assert len(p32.solver(pre.factors, 0.1, {})) == len(pre.factors)
