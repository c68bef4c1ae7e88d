"""Pure rules of the damping schedule (App. B.3) and parameter averaging (B.4)."""

from __future__ import annotations

import math
from typing import Sequence


def reduction_ratio(f_new: float, f_old: float, model_decrease: float) -> float:
    """ρ of eq. (42): actual change of f over the change predicted by the quadratic model.

    ``model_decrease`` is q(δ*) − q(0) (negative for a descent step). Returns ``-inf`` when
    anything is non-finite or the model predicts no decrease, so that the damping rises.
    """
    if not (math.isfinite(f_new) and math.isfinite(f_old) and math.isfinite(model_decrease)) or model_decrease >= 0:
        return -math.inf
    return (f_new - f_old) / model_decrease


def levenberg_marquardt(tau: float, rho: float, omega: float, low: float = 0.75, high: float = 0.75,
                        tau_min: float = 0.0, tau_max: float = math.inf) -> float:
    """B.3.1: τ ← ω_τ τ if ρ > ``high``; τ ← τ/ω_τ if ρ < ``low``; else unchanged.

    The paper uses low = high = 0.75; Martens & Grosse's code uses low = 0.25 (REPRODUCTION.md).
    """
    if rho > high:
        tau = tau * omega
    elif rho < low or not math.isfinite(rho):
        tau = tau / omega
    return min(max(tau, tau_min), tau_max)


def gamma_candidates(gamma: float, omega: float, gamma_min: float = 0.0, gamma_max: float = math.inf) -> Sequence[float]:
    """B.3.2: the three candidates {ω_γ γ, γ, γ/ω_γ}, clipped to [gamma_min, gamma_max]."""
    return [min(max(g, gamma_min), gamma_max) for g in (omega * gamma, gamma, gamma / omega)]


def polyak_beta(t: int, beta_max: float = 0.95) -> float:
    """β_t = min(0.95, 1 − 1/t) of eq. (45): θ̂_t is the exact mean of the first iterates."""
    return min(beta_max, 1.0 - 1.0 / t)


def curvature_along(f_new: float, f_old: float, alpha: float, slope: float) -> float:
    """The curvature c along δ that a measured loss implies (a one-dimensional secant fit).

    c solves f(θ + αδ) = f(θ) + α·δᵀg + ½α²c, with ``slope`` = δᵀg; compare it with the
    model's δᵀC̄δ of eq. (41). ``inf`` when ``f_new`` is not finite.
    """
    if not math.isfinite(f_new):
        return math.inf
    return 2.0 * (f_new - f_old - alpha * slope) / (alpha * alpha)


def guard_tau(tau: float, omega: float, curvature: float, dGd: float, delta_sq: float, weight_decay: float,
              tau_min: float = 0.0, tau_max: float = math.inf) -> float:
    """τ after a step that the loss did not confirm: raised at least to τ/ω_τ, and at least so far
    that δᵀGδ + (τ+η)‖δ‖² equals the measured ``curvature`` along δ (:func:`curvature_along`),
    i.e. Levenberg–Marquardt's correction (B.3.1) in one go instead of over many T_τ periods.
    A non-finite ``curvature`` (the loss overflowed) gives only τ/ω_τ: there is nothing to fit."""
    need = (curvature - dGd) / delta_sq - weight_decay if delta_sq > 0 else math.nan
    tau = max(tau / omega, need) if math.isfinite(need) else tau / omega
    return min(max(tau, tau_min), tau_max)
