"""Hessian-free: the full Gauss-Newton step by conjugate gradients (Martens, 2010)."""

from __future__ import annotations

import math
from typing import List, Optional

from torch import Tensor, nn

from ..distributed.comm import Communicator
from ..gvp import gvp_from_trace, quadratic_from_trace
from ..linalg import conjugate_gradient
from ..losses import Loss
from .base import CurvatureOptimizer, _dot, _finite, _norm
from .damping import levenberg_marquardt, reduction_ratio
from .info import StepInfo


class HessianFree(CurvatureOptimizer):
    """Full Gauss-Newton steps: CG on (Ḡ + (τ+η)I) δ = −g with Ḡv by the R-operator.

    As in Martens (2010): Levenberg-Marquardt damping τ adapted every step from ρ with
    the thresholds 1/4 and 3/4 and factors 3/2 and 2/3 (``omega_tau``); CG warm-started from
    ``warm_start`` (0.95) times the previous solution; CG stopped by Martens' relative-progress
    rule or at ``cg_max_iter``. The step size is then chosen on the damped quadratic model as
    in eq. (39)–(41) (≈ 1 when CG has converged), so that every gnopt optimiser reports the
    same statistics, followed by Martens' backtracking line search (α ← 0.8α until
    f(θ+αδ) ≤ f(θ) + 10⁻²αδᵀg; a step that finds no decrease is rejected). Same ``step``/``state_dict``/``averaged`` interface as
    :class:`GaussNewton`; ``info.extra['cg_iters']`` counts the CG iterations.

    Data-parallel (:mod:`gnopt.distributed`, ``distributed="auto"``): each rank passes its
    shard; the gradient, every Ḡv product of CG (one all-reduce of all parameters per CG
    iteration), δᵀḠδ and the objective of the line search and of ρ are global means, so
    every rank runs the identical CG and line search.
    """

    def __init__(self, model: nn.Module, loss: "str | Loss" = "mse", *, tau: float = 1.0, weight_decay: float = 0.0,
                 omega_tau: float = 2.0 / 3.0, rho_low: float = 0.25, rho_high: float = 0.75,
                 tau_min: float = 1e-8, tau_max: float = 1e8, cg_max_iter: int = 100, cg_tol: float = 1e-6,
                 progress_tol: Optional[float] = 5e-4, warm_start: float = 0.95, backtrack: int = 12,
                 polyak: bool = True, distributed: "str | bool | Communicator" = "auto") -> None:
        super().__init__(model, loss, weight_decay, polyak, distributed=distributed)
        if tau <= 0:
            raise ValueError(f"tau must be > 0; got {tau}")
        self.tau = float(tau)
        self.omega_tau, self.rho_low, self.rho_high = omega_tau, rho_low, rho_high
        self.tau_bounds = (tau_min, tau_max)
        self.cg_max_iter, self.cg_tol, self.progress_tol = cg_max_iter, cg_tol, progress_tol
        self.warm_start = warm_start
        self.backtrack = backtrack
        self.previous: Optional[List[Tensor]] = None

    def _reject(self, t: int, loss: float, reason: str) -> StepInfo:
        self.tau = min(self.tau / self.omega_tau, self.tau_bounds[1])
        self.rejected_count += 1
        return StepInfo(step=t, loss=loss, tau=self.tau, rejected=True, reason=reason)

    def step(self, x: Tensor, y: Tensor) -> StepInfo:
        begun = self.begin_step(x, y)
        if isinstance(begun, StepInfo):
            return begun
        t, trace, loss, grads, shard = begun
        lam = self.tau + self.weight_decay

        def matvec(v: List[Tensor]) -> List[Tensor]:
            gv = gvp_from_trace(self.net, trace, y, self.loss, v, reduce=shard)
            return [a + lam * b for a, b in zip(gv, v)]

        x0 = None if self.previous is None else [self.warm_start * p for p in self.previous]
        delta, cg = conjugate_gradient(matvec, [-g for g in grads], x0, tol=self.cg_tol, max_iter=self.cg_max_iter,
                                       progress_tol=self.progress_tol)
        if not _finite(delta) or _norm(delta) == 0:
            return self._reject(t, loss, f"CG gave no usable direction ({cg.reason})")
        dg = float(_dot(delta, grads))
        dCd = float(quadratic_from_trace(self.net, trace, y, self.loss, delta, reduce=shard)) + lam * _norm(delta) ** 2
        if not (math.isfinite(dg) and math.isfinite(dCd)) or dg >= 0 or dCd <= 0:
            return self._reject(t, loss, f"no descent along the CG direction (δᵀg = {dg:g})")
        alpha = -dg / dCd
        before = self.layer_params()
        f_old = loss + (0.5 * self.weight_decay * _norm(before) ** 2 if self.weight_decay else 0.0)
        # Martens' (2010) backtracking line search: α ← 0.8 α until the Armijo condition holds.
        f_new = math.nan
        for _ in range(self.backtrack):
            self.set_layer_params(before)
            self.add_to_params(delta, alpha)
            f_new = self.objective(x, y, reduce=shard) if _finite(self.layer_params()) else math.nan
            if math.isfinite(f_new) and f_new <= f_old + 1e-2 * alpha * dg:
                break
            alpha *= 0.8
        else:
            self.set_layer_params(before)
            self.previous = None
            return self._reject(t, loss, "no decrease along the CG direction (line search failed)")
        change = alpha * dg + 0.5 * alpha * alpha * dCd
        self.previous = [d.clone() for d in delta]
        rho = reduction_ratio(f_new, f_old, change)
        self.tau = levenberg_marquardt(self.tau, rho, self.omega_tau, self.rho_low, self.rho_high, *self.tau_bounds)
        self.accepted += 1
        after = self.layer_params()
        self.update_average(after)
        return StepInfo(step=t, loss=loss, alpha=alpha, rho=rho, tau=self.tau, grad_norm=_norm(grads),
                        update_norm=alpha * _norm(delta), param_norm=_norm(after), model_decrease=change,
                        extra={"cg_iters": float(cg.iterations)})

    def state_dict(self) -> dict:
        sd = self.base_state()
        sd.update({"tau": self.tau, "previous": None if self.previous is None else [p.clone() for p in self.previous]})
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.load_base_state(sd)
        self.tau = float(sd["tau"])
        self.previous = None if sd["previous"] is None else [p.clone() for p in sd["previous"]]
