"""The step guard of :class:`gnopt.GaussNewton`: a step far longer than usual is verified by the
loss (ρ of eq. 42) before it is kept, and τ (B.3.1) is corrected from the measured curvature."""

import math

import pytest
import torch

import gnopt
from gnopt.optim.damping import curvature_along, guard_tau
from test_optim import ae_data, autoencoder, params_of


def test_curvature_along_recovers_an_exact_quadratic():
    f0, slope, c = 3.0, -2.0, 0.7
    for alpha in (0.1, 1.0, 25.0):
        f = f0 + alpha * slope + 0.5 * alpha * alpha * c
        assert math.isclose(curvature_along(f, f0, alpha, slope), c, rel_tol=1e-9)
    assert curvature_along(math.inf, f0, 1.0, slope) == math.inf
    assert curvature_along(math.nan, f0, 1.0, slope) == math.inf


def test_guard_tau_matches_the_measured_curvature():
    dGd, dsq, eta = 0.5, 4.0, 0.01
    tau = guard_tau(1e-8, 0.5, curvature=10.5, dGd=dGd, delta_sq=dsq, weight_decay=eta)
    assert math.isclose(dGd + (tau + eta) * dsq, 10.5)  # δᵀGδ + (τ+η)‖δ‖² = c
    assert guard_tau(1.0, 0.5, 0.1, dGd, dsq, eta) == 2.0  # the model was pessimistic: still τ/ω
    assert guard_tau(1.0, 0.5, math.inf, dGd, dsq, eta) == 2.0  # nothing to fit
    assert guard_tau(1.0, 0.5, 1e30, dGd, dsq, eta, tau_max=1e3) == 1e3


def _trained(guard, steps=5, **kw):
    model = autoencoder()
    x = ae_data(128)
    opt = gnopt.GaussNewton(model, "bce", "kfra", factor_period=1, step_size_fraction=1.0, step_guard=guard, **kw)
    for _ in range(steps):
        assert not opt.step(x, x).rejected
    return model, x, opt


def _blind(opt, factor):
    """δᵀḠδ seen as ``factor`` of its value (a subsample that misses the curvature), τ at its floor."""
    real = opt._quadratic

    def blinded(*a):
        q, slope = real(*a)
        return q * factor, slope

    opt._quadratic = blinded
    opt.tau = opt.tau_bounds[0]


@pytest.mark.parametrize("factor", [1e-2, 1e-4])
def test_guard_backtracks_a_step_the_loss_refutes(factor):
    # without the guard the same step multiplies the objective (this is what happened to KFLR
    # on the mixture classifier at update 987: α 200× too long, loss 0.02 → 3)
    _, x, bare = _trained(None)
    _blind(bare, factor)
    f0 = bare.objective(x, x)
    bare.step(x, x)
    assert bare.objective(x, x) > 10 * f0

    _, x, opt = _trained(10.0)
    _blind(opt, factor)
    f0 = opt.objective(x, x)
    radius = 10.0 * opt.length_average
    info = opt.step(x, x)
    assert not info.rejected
    assert info.extra["guard_checks"] >= 2  # refuted once, then confirmed
    assert info.rho >= opt.guard_rho
    assert opt.objective(x, x) < f0
    assert info.update_norm <= radius * (1 + 1e-9)  # retries stay within the guard's radius
    assert opt.tau > 1e3 * opt.tau_bounds[0]  # τ now carries the curvature the model missed
    assert opt.guarded_count == 1


def test_guard_rejection_restores_the_parameters_exactly():
    model, x, opt = _trained(10.0, guard_tries=0)
    _blind(opt, 1e-4)
    before = params_of(model)
    tau = opt.tau
    info = opt.step(x, x)
    assert info.rejected and "step guard" in info.reason
    assert all(torch.equal(p, q) for p, q in zip(params_of(model), before))
    assert opt.tau > tau and opt.guarded_count == 1
    assert opt.accepted == 5


def test_guard_confirms_a_long_step_that_is_good():
    """A long step that the loss confirms is kept unchanged (one objective evaluation)."""
    model, x, opt = _trained(10.0)
    opt.length_average *= 1e-3  # every step now looks 1000× too long
    a = opt.step(x, x)
    assert not a.rejected and a.extra["guard_checks"] == 1 and a.rho >= opt.guard_rho
    assert opt.guarded_count == 0
    # the same step without the guard is identical
    model2, x2, bare = _trained(None)
    b = bare.step(x2, x2)
    assert a.alpha == b.alpha
    assert all(torch.equal(p, q) for p, q in zip(params_of(model), params_of(model2)))


def test_guard_is_silent_in_normal_training_and_survives_a_checkpoint():
    model = autoencoder()
    x = ae_data(128)
    opt = gnopt.GaussNewton(model, "bce", "kfra")  # the defaults: κ = 3
    infos = [opt.step(x[i:i + 64], x[i:i + 64]) for i in (0, 32, 64) * 10]
    assert not any(i.rejected for i in infos)
    assert opt.guarded_count == 0 and opt.length_average > 0
    sd = opt.state_dict()
    assert sd["length_average"] == opt.length_average and sd["config"]["step_guard"] == 3.0
    other = gnopt.GaussNewton(autoencoder(), "bce", "kfra", factor_period=1, step_size_fraction=1.0)
    other.load_state_dict(sd)
    assert other.length_average == opt.length_average
    del sd["length_average"]  # a checkpoint from before the guard
    other.load_state_dict(sd)
    assert other.length_average is None


def test_guard_options_are_checked():
    with pytest.raises(ValueError, match="step_guard"):
        gnopt.GaussNewton(autoencoder(), "bce", step_guard=1.0)
    with pytest.raises(ValueError, match="guard_tries"):
        gnopt.GaussNewton(autoencoder(), "bce", guard_tries=-1)
