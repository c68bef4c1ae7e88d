"""The practical Gauss-Newton optimiser of Appendix B (Algorithm 1 plus damping heuristics)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..curvature.trace import Trace, first_rows, subsample, subsample_size
from ..distributed.comm import Communicator, Shard, WorkShare, kronecker_cost
from ..curvature.trace import forward_output
from ..gvp import quadratic_and_slope_from_trace, quadratic_from_trace
from ..linalg import LinalgFailure
from ..losses import Loss
from .base import CurvatureOptimizer, _dot, _finite, _norm
from .damping import curvature_along, gamma_candidates, guard_tau, levenberg_marquardt, reduction_ratio
from .info import StepInfo
from .preconditioner import Preconditioner
from .timing import PhaseTimer


class GaussNewton(CurvatureOptimizer):
    r"""Block-diagonal Gauss-Newton with Kronecker-factored curvature (Botev et al. 2017).

    One ``step(x, y)`` on a minibatch does (Algorithm 1 and App. B):

    1. forward and backward pass: loss f, gradient g = ∇f + ηθ (weight decay η);
    2. curvature G̃_λ = Q_λ ⊗ 𝒢_λ per layer by ``curvature`` (``kfra`` eq. 26, ``kflr``
       eq. 23–25, ``kfac`` App. C.3, or ``block``: the exact dense GN blocks, small nets),
       optionally a moving average (``curvature_ema``), refreshed at every ``factor_period``-th
       step (so that the γ search falls on a refresh when ``factor_period`` divides ``T_gamma``);
    3. every ``T_gamma`` steps, the greedy choice of γ among {ω_γγ, γ, γ/ω_γ} that minimises
       the quadratic model of the full GN (B.3.2);
    4. direction δ̃_λ = −(G̃_λ + (γ+η)I)⁻¹ g_λ (eq. 33–35), by the factored approximation with
       the trace-norm ω (``damping="factored"``, eq. 36–38) or exactly by eigendecompositions
       (``damping="eigen"``);
    5. step size α* = −δ̃ᵀg / (δ̃ᵀḠδ̃ + (τ+η)‖δ̃‖²) (eq. 39–41) with δ̃ᵀḠδ̃ = (Jδ̃)ᵀH_L(Jδ̃)
       from one forward-mode (R-operator) pass over the stored activations;
    6. θ ← θ + α*δ̃; every ``T_tau`` steps the reduction ratio ρ (eq. 42) on the same batch
       (on the rows where δ̃ᵀḠδ̃ was measured, see ``step_size_fraction``) updates τ by
       Levenberg-Marquardt (B.3.1);
    7. Polyak averaging θ̂_t = β_tθ̂_{t−1} + (1−β_t)θ_t, β_t = min(0.95, 1 − 1/t) (B.4).

    Defaults are the paper's: T_τ = 5, ω_τ = 0.95^T_τ, T_γ = 20, ω_γ = 0.95^T_γ, ρ threshold
    0.75 on both sides (B.3.1; Martens & Grosse use 0.25 below: pass ``rho_low=0.25``).
    The paper does not give τ₀, γ₀ or η. We use τ₀ = γ₀ = 1 (the objective is a sum over
    outputs, so its curvature is O(1)-O(100); the two schedules move a factor 10 in
    ~45 and ~2.3 adaptations, i.e. within the first few hundred steps either way) and η = 0
    (η = 1e-5 in Martens' set-ups, pass ``weight_decay``).
    Not the paper's (which recomputes everything every step): ``factor_period=10`` and
    ``step_size_fraction=0.25``, chosen from measurements (README, "Speed" and "Quality"): on
    CURVES, factors every 10 updates cost 2.0× an Adam update instead of 3.9× and reached a
    *lower* objective after 500 updates than every step or every 5 (three seeds);
    ``factor_period=1, step_size_fraction=1`` is Algorithm 1 as written.

    ``explicit_inverse=True`` (default; factored damping) forms the damped factors' inverses
    once per decomposition (Cholesky, then its inverse), stored padded to 64-byte rows
    (an exactly diagonal factor, e.g. KFRA's top G for mse/bce, as its diagonal),
    so that applying the preconditioner is two aligned matrix products instead of four
    triangular solves; measured faster on this CPU even when recomputed every step, and much
    faster when decompositions are reused (``factor_period > 1``). ``False``: Cholesky solves.

    ``step_size_fraction`` f ∈ (0, 1]: δ̃ᵀḠδ̃ in eq. (41) (and so α* and the γ choice) is
    estimated on the first ⌈fN⌉ examples of the minibatch (f = 1 is the paper's algorithm);
    the forward-mode product then costs f of two forward passes. ρ (eq. 42) is then measured
    on the same rows, with a quadratic model that is wholly theirs: the slope of their loss
    along δ̃ (from the same forward-mode product, (1/m) Σ ∇_hℓ_nᵀ(Jδ̃)_n + ηθᵀδ̃), the
    curvature δ̃ᵀḠδ̃ + (τ+η)‖δ̃‖², and the actual change of their objective (a forward pass
    of f of the batch instead of all of it). The gradient and the curvature factors always
    use the whole minibatch.

    ``step_size_check`` c (default 0.1; ``None`` switches it off): with f < 1, an update whose
    step-size rows' mean loss differs from the minibatch's by more than c·|L| measures δ̃ᵀḠδ̃
    and ρ on the whole minibatch instead (one loss evaluation on the rows' stored outputs,
    ``info.extra["full_rows"]``; the relative difference is ``info.extra["rows_loss_deviation"]``).
    Near zero loss a few examples carry the loss and the curvature (the mixture classifier of
    section 5.2): a quarter that misses them sees almost no curvature along δ̃, α* overshoots,
    and the damping τ that the guard and ρ then impose stalls training — at ~10⁻⁴ on the
    mixture, where c = 0.1 reaches 4·10⁻⁶ by update 1,000 as f = 1 does (c = 0.5 fired too
    rarely: 3·10⁻⁴; README). On the autoencoders the rows' loss stays within ~6 % of the
    batch's (300 updates each of CURVES, MNIST, FACES) and the check does not fire.

    ``solve_dtype`` (e.g. ``"float64"``): decompositions and damped solves in that dtype
    (default: the model's dtype; float64 is retried automatically when a solve fails).

    ``step_guard`` κ (default 3; ``None`` disables): a step whose length α*‖δ̃‖ exceeds κ times
    the moving average (weight 0.1) of the accepted steps' lengths is *verified* before it is
    kept: the objective is evaluated after it on the same minibatch (one forward pass) and the
    step stands only if ρ (eq. 42) ≥ ``guard_rho`` (0.25). Otherwise τ is raised at once to
    the value at which the model's curvature along δ̃, δ̃ᵀḠδ̃ + (τ+η)‖δ̃‖², matches the one the
    measured loss implies (a secant fit, :func:`~gnopt.optim.damping.curvature_along`), α*
    is recomputed (at most half the previous one, and no longer than κ times the average
    length) and the step tried again, up to
    ``guard_tries`` times; if none is confirmed, θ is restored exactly and the step rejected.
    Why: near zero loss (e.g. the mixture classifier) δ̃ᵀḠδ̃ estimated on part of the batch can
    be ~0 while τ and γ sit at their floors, so α* jumps 100× and the loss with it, and the
    ρ test every T_τ steps comes too late (it measures a different step). On the mixture
    every step that made the loss jump tenfold was 3.8–10× the average; on the autoencoders
    ≤ 0.6 % of the steps exceed 3× (a forward pass each), and nothing is spent otherwise.

    Devices: the optimiser runs where the model is (CPU or CUDA). Host synchronisations are
    the scalars the algorithm branches on or reports — the loss (and the step-size rows'
    loss, ``step_size_check``), δ̃ᵀg, δ̃ᵀḠδ̃, norms, ρ, the
    finiteness checks of the gradient, the direction and the update (one each, whatever the
    number of layers), the targets' range check of ``bce`` — 10 to 20 per ordinary update; a
    refresh adds a few per layer (finiteness of the factors, each decomposition's status).

    ``timing=True`` adds the seconds of each phase to ``info.extra`` (``t_forward_backward``,
    ``t_factors``, ``t_decompose``, ``t_precondition``, ``t_gvp``, ``t_bookkeeping``).

    Reliability: a step whose loss, gradient, curvature, direction or step size is not finite,
    or whose solves fail in float64 and with raised damping, is *rejected*: the parameters
    stay exactly as they were, τ and γ are raised (divided by their ω), and
    ``info.rejected``/``info.reason`` say so.

    Peak memory: a refresh frees the previous factors and decompositions before building new
    ones (after a rejected refresh the next step estimates the curvature afresh). Unless
    something needs the factors before the next refresh (``curvature_ema``; a γ search
    between refreshes, i.e. ``factor_period`` not dividing ``T_gamma`` with factored damping;
    distributed work sharing), only the chosen damping's decompositions outlive a refresh step
    (a rejection that changes γ then makes the next step a refresh; checkpoints carry the
    decompositions), and they never coexist with all the factors: each layer's factors are
    released as soon as its decompositions are made, and in the γ search every candidate is
    decomposed, applied and freed a layer at a time, the winner decomposed once more (only if
    an update before the next refresh needs it; never with ``factor_period=1``). One direction
    exists at a time (a challenger that wins is preconditioned again: at most every
    ``T_gamma`` steps). The gradient is released layer by layer as the direction is made
    (outside a γ search), the objective's forward passes keep no activations, only the step
    size's rows of the trace are kept after the factors, and the trace never holds the
    pre-activations of sigmoid/tanh/ReLU stages (f' comes from their outputs, which autograd
    keeps anyway). See :meth:`_choose_gamma`.

    Data-parallel training (:mod:`gnopt.distributed`, ``distributed="auto"``): when
    ``torch.distributed`` is initialised with several ranks, each rank passes its shard of
    the global minibatch to ``step``; gradients, curvature, δᵀḠδ and the objective for ρ are
    averaged over all examples (shards weighted by size), so every rank takes the identical
    step, equal to one process's step on the whole batch. ``work_sharing=True`` assigns each
    layer's decompositions and solves to one rank (greedy by d_out³ + d_in³) and gathers the
    directions; ``False`` replicates them (same result).
    """

    def __init__(self, model: nn.Module, loss: "str | Loss" = "mse", curvature: str = "kfra", *,
                 damping: str = "factored", tau: float = 1.0, gamma: float = 1.0, weight_decay: float = 0.0,
                 T_tau: int = 5, omega_tau: Optional[float] = None, T_gamma: int = 20,
                 omega_gamma: Optional[float] = None, rho_low: float = 0.75, rho_high: float = 0.75,
                 tau_min: float = 1e-8, tau_max: float = 1e8, gamma_min: float = 1e-8, gamma_max: float = 1e8,
                 curvature_ema: float = 0.0, factor_period: int = 10, samples: int = 1, seed: int = 0,
                 max_alpha: Optional[float] = None, timing: bool = False, polyak: bool = True, chunk_size: Optional[int] = None,
                 distributed: "str | bool | Communicator" = "auto", work_sharing: bool = True,
                 explicit_inverse: bool = True, step_size_fraction: float = 0.25,
                 solve_dtype: "torch.dtype | str | None" = None, step_guard: Optional[float] = 3.0,
                 guard_rho: float = 0.25, guard_tries: int = 3, step_size_check: Optional[float] = 0.1) -> None:
        super().__init__(model, loss, weight_decay, polyak, distributed=distributed)
        if tau <= 0 or gamma <= 0:
            raise ValueError(f"tau and gamma must be > 0; got {tau}, {gamma}")
        if T_tau < 1 or T_gamma < 1 or factor_period < 1:
            raise ValueError("T_tau, T_gamma and factor_period must be >= 1")
        if not 0.0 < step_size_fraction <= 1.0:
            raise ValueError(f"step_size_fraction must be in (0, 1]; got {step_size_fraction}")
        self.step_size_fraction = float(step_size_fraction)
        if step_size_check is not None and not step_size_check > 0:
            raise ValueError(f"step_size_check must be > 0 (or None to disable); got {step_size_check}")
        self.step_size_check = None if step_size_check is None else float(step_size_check)
        if step_guard is not None and not step_guard > 1.0:
            raise ValueError(f"step_guard must be > 1 (or None to disable); got {step_guard}")
        if guard_tries < 0:
            raise ValueError(f"guard_tries must be >= 0; got {guard_tries}")
        self.step_guard = None if step_guard is None else float(step_guard)
        self.guard_rho, self.guard_tries = float(guard_rho), int(guard_tries)
        self.length_average: Optional[float] = None  # moving average of accepted α‖δ̃‖ (the guard's yardstick)
        self.guarded_count = 0
        self.curvature = curvature
        if isinstance(solve_dtype, str):
            if not isinstance(getattr(torch, solve_dtype, None), torch.dtype):
                raise ValueError(f"unknown solve_dtype {solve_dtype!r}; use e.g. 'float64'")
            solve_dtype = getattr(torch, solve_dtype)
        self.pre = Preconditioner(self.net, self.loss, curvature, damping, curvature_ema, samples, chunk_size,
                                  explicit_inverse, solve_dtype)
        self.share: Optional[WorkShare] = None
        if self.comm.distributed and work_sharing:
            dims = [(st.d_out, st.d_in + int(st.has_bias)) for st in self.net.stages]
            costs = [float(o * i) ** 3 if curvature == "block" else kronecker_cost(o, i) for o, i in dims]
            self.share = WorkShare.balanced(self.comm, costs)
        self.tau, self.gamma = float(tau), float(gamma)
        self.T_tau, self.T_gamma = T_tau, T_gamma
        self.omega_tau = 0.95 ** T_tau if omega_tau is None else omega_tau
        self.omega_gamma = 0.95 ** T_gamma if omega_gamma is None else omega_gamma
        self.rho_low, self.rho_high = rho_low, rho_high
        # which of {ω_γγ, γ, γ/ω_γ} won the last γ search (0, 1, 2): the next search keeps that
        # candidate's decompositions (a guess that only saves work; the update never depends on it)
        self._gamma_last_win = 0
        self.tau_bounds, self.gamma_bounds = (tau_min, tau_max), (gamma_min, gamma_max)
        self.factor_period = factor_period
        self.max_alpha = max_alpha
        self.timing = timing
        self.seed = seed
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._device_generator: Optional[torch.Generator] = None
        self._device_rng_state: Optional[Tensor] = None  # a loaded device generator state, applied at creation

    # -- helpers ---------------------------------------------------------------------------
    def _kfac_generator(self, x: Tensor) -> Optional[torch.Generator]:
        if self.curvature != "kfac":
            return None
        if x.device.type == "cpu":
            return self.generator
        if self._device_generator is None:  # a device generator seeded from the CPU one
            self._device_generator = torch.Generator(device=x.device)
            if self._device_rng_state is not None:  # resumed: continue the saved stream
                self._device_generator.set_state(self._device_rng_state)
                self._device_rng_state = None
            else:
                self._device_generator.manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))
        return self._device_generator

    def _curvature(self, trace: Trace, y: Tensor, x: Tensor,
                   shard: Optional[Shard] = None) -> Tuple[List[List[Tensor]], Dict[object, list], bool]:
        """(factors, solver cache, refreshed?) for this step; nothing is committed.

        The curvature is refreshed at every ``factor_period``-th step (so that, when
        ``factor_period`` divides ``T_gamma``, every γ search falls on a refresh), and
        whenever the stored curvature cannot serve the step (the first step; after a rejection
        changed γ, or at a γ search off the refresh schedule, while only decompositions were
        kept, see :meth:`_keeps_factors`).
        """
        t = self.step_count
        search_needs_factors = (t % self.T_gamma == 0 and self.pre.factors is None
                                and not self.pre.damping_free_solvers)  # e.g. T_gamma changed mid-run
        if t % self.factor_period != 0 and self.pre.can_solve(self.gamma + self.weight_decay) \
                and not search_needs_factors:
            return self.pre.factors, self.pre._cache, False  # type: ignore[return-value]
        # Peak memory: the committed decompositions are a memo, and without a moving average the
        # committed factors are never needed again; drop both before the new ones are built (a
        # rejected step then leaves no curvature, and the next step estimates it afresh).
        self.pre.release(keep_factors=self.pre.ema > 0)
        gen = self._kfac_generator(x)
        new = self.pre.estimate(trace, y, gen) if shard is None else self.pre.estimate(trace, y, gen, shard=shard)
        return self.pre.blend(new), {}, True

    def _keeps_factors(self) -> bool:
        """Whether the factors must outlive their refresh step: for the moving average, or for
        a γ search between refreshes (factored damping with ``factor_period`` not dividing
        ``T_gamma``), or under distributed work sharing (a rank decomposes only its own layers,
        and a checkpoint, or a resumption on another number of ranks, needs all of them).
        Otherwise only the chosen damping's decompositions are kept (peak memory: the factors
        are as large as the decompositions)."""
        if self.pre.ema > 0 or self.share is not None:
            return True
        return not (self.pre.damping_free_solvers or self.T_gamma % self.factor_period == 0)

    def _step_size_rows(self, trace: Trace, y: Tensor, shard: Optional[Shard], fraction: Optional[float] = None
                        ) -> Tuple[Optional[Trace], Optional[Tensor], int]:
        """The rows of this process's trace on which δᵀḠδ is estimated (eq. 41), the first
        ⌈fN⌉ of the (global) minibatch, f = ``fraction`` (default ``step_size_fraction``):
        (trace, targets, global count); the trace is ``None`` on a rank that holds none of them."""
        f = self.step_size_fraction if fraction is None else fraction
        if shard is None:
            sub, ys = subsample(trace, y, f)
            return sub, ys, sub.output.shape[0]
        m = subsample_size(shard.total, f) if f < 1.0 else shard.total
        local = max(0, min(m - shard.offset, shard.n))
        if local == 0:
            return None, None, m
        sub, ys = first_rows(trace, y, local)
        return sub, ys, m

    def _checked_rows(self, trace: Trace, x: Tensor, y: Tensor, loss: float, shard: Optional[Shard]
                      ) -> Tuple[Tuple[Optional[Trace], Optional[Tensor], int], Optional[float], Optional[float], bool]:
        """The step size's rows after ``step_size_check``: (rows as :meth:`_step_size_rows`, their
        mean loss, its relative deviation from the minibatch loss ``loss``, whether the whole
        batch replaced them because the deviation exceeds the check); the loss and deviation
        are ``None`` without a check."""
        rows = self._step_size_rows(trace, y, shard)
        if self.step_size_fraction == 1.0 or self.step_size_check is None:
            return rows, None, None, False
        rows_loss = self._rows_loss(x, y, 0 if rows[0] is None else rows[0].output.shape[0], rows[2], shard,
                                    None if rows[0] is None else rows[0].output)
        dev = abs(rows_loss - loss) / abs(loss) if loss else math.inf
        if not dev <= self.step_size_check:  # unrepresentative rows: measure on the whole batch
            return self._step_size_rows(trace, y, shard, 1.0), rows_loss, dev, True
        return rows, rows_loss, dev, False

    def _direction(self, factors, cache, grads, k: float, shard: Optional[Shard] = None,
                   transient: bool = False, consume: bool = False,
                   dots: Optional[List[Tensor]] = None) -> List[Tensor]:
        """The damped direction δ̃ = −C̃⁻¹g for the damping ``k`` = γ + η (eq. 34–36), per layer.

        ``transient``: unless ``cache`` holds them, each layer's decomposition is built,
        applied and freed at once (a γ-search candidate: peak memory), nothing is cached.
        ``consume`` (factors not kept, see :meth:`_lean`): the decompositions are built and
        cached a layer at a time and each layer's factors are released from ``factors`` (the
        step's own list) as soon as they are decomposed.
        ``dots`` (a list, one process): each layer's δ̃_λᵀg_λ (float64, the terms of
        :func:`~gnopt.numerics.dot`) is appended to it as δ̃_λ is made, and ``grads[λ]`` is
        then released (the step's own list; peak memory: the gradient and the direction
        never both exist whole).
        Raises :class:`LinalgFailure` if the direction is not finite.
        """
        timer = self._timer
        if shard is not None and self.share is not None:
            with timer.phase("precondition"):
                delta = [d.neg_() for d in self.pre.solve(factors, grads, k, cache, share=self.share)]
        else:
            per_layer = (transient or consume) and self.pre.key(k) not in cache
            if not per_layer:
                with timer.phase("decompose"):
                    solvers = self.pre.solver(factors, k, cache)
            delta, built = [], []
            for i in range(len(grads)):
                if per_layer:
                    s = self._layer_solver(factors, i, k, consume)
                    if consume:
                        built.append(s)
                else:
                    s = solvers[i]
                with timer.phase("precondition"):
                    d = self.pre.apply(s, grads[i], k).neg_()
                del s
                if dots is not None:
                    dots.append(torch.dot(d.reshape(-1), grads[i].reshape(-1)).to(torch.float64))
                    grads[i] = None
                delta.append(d)
                del d
            if consume and per_layer:
                cache[self.pre.key(k)] = built
        if not _finite(delta):
            raise LinalgFailure("the damped solve gave a non-finite direction")
        return delta

    def _layer_solver(self, factors, i: int, k: float, consume: bool) -> object:
        """Layer ``i``'s solver for the damping ``k``, built afresh (nothing cached); with
        ``consume`` the layer's factors are then released from ``factors`` (the step's own list)."""
        with self._timer.phase("decompose"):
            s = self.pre.solver([factors[i]], k, {})[0]
        if consume:
            factors[i] = None
        return s

    def _candidate(self, factors, cache, grads, rows, gamma: float, shard: Optional[Shard] = None,
                   transient: bool = False, slope: bool = False, consume: bool = False,
                   release_grads: bool = False
                   ) -> Tuple[List[Tensor], float, float, float, float, float, Optional[float]]:
        """Direction δ̃ for ``gamma`` (:meth:`_direction`), its step size α*, the model change
        q(α*δ̃) − q(0), δ̃ᵀḠδ̃, δ̃ᵀg, δ̃ᵀC̄δ̃ = δ̃ᵀḠδ̃ + (τ+η)‖δ̃‖² and (``slope``) the loss's slope
        along δ̃ on the step size's rows (for ρ on those rows), else ``None``.
        ``release_grads``: the gradient is not needed after δ̃ᵀg; ``grads`` (the step's own
        list) is released layer by layer as the direction is made, or emptied before the
        forward-mode product (peak memory).
        """
        dots: Optional[List[Tensor]] = [] if release_grads and (shard is None or self.share is None) else None
        delta = self._direction(factors, cache, grads, gamma + self.weight_decay, shard, transient, consume, dots)
        timer = self._timer
        dg = float(torch.stack(dots).sum()) if dots is not None else float(_dot(delta, grads))
        if release_grads:
            grads.clear()
        with timer.phase("gvp"):
            dGd, rows_slope = self._quadratic(rows, delta, shard, slope)
        dCd = dGd + (self.tau + self.weight_decay) * _norm(delta) ** 2
        if not (math.isfinite(dg) and math.isfinite(dCd)) or dCd <= 0 or dg >= 0:
            raise LinalgFailure(f"no descent along the direction (δᵀg = {dg:g}, δᵀC̄δ = {dCd:g})")
        alpha = -dg / dCd
        if self.max_alpha is not None:
            alpha = min(alpha, self.max_alpha)
        change = alpha * dg + 0.5 * alpha * alpha * dCd
        return delta, alpha, change, dGd, dg, dCd, rows_slope

    def _quadratic(self, rows: Tuple[Optional[Trace], Optional[Tensor], int], delta: List[Tensor],
                   shard: Optional[Shard], slope: bool = False) -> Tuple[float, Optional[float]]:
        """δᵀḠδ over the rows of :meth:`_step_size_rows` and (``slope``) the slope of their
        mean loss along δ, (1/m) Σ ∇_h ℓ_nᵀ (J δ)_n, from the same forward-mode product.

        Distributed, the subsample is the first ⌈fN⌉ rows of the *global* batch (ranks in
        order), so that any number of processes computes the same number as one process.
        """
        sub, ys, m = rows
        if shard is None:
            assert sub is not None and ys is not None
            if slope:
                q, s = torch.stack(quadratic_and_slope_from_trace(self.net, sub, ys, self.loss, delta)).tolist()
                return q, s  # one host synchronisation for both
            return float(quadratic_from_trace(self.net, sub, ys, self.loss, delta)), None
        if self.step_size_fraction == 1.0 and not slope:
            return float(quadratic_from_trace(self.net, sub, ys, self.loss, delta, reduce=shard)), None
        local = 0 if sub is None else sub.output.shape[0]
        qs = torch.stack(quadratic_and_slope_from_trace(self.net, sub, ys, self.loss, delta)) if local else None
        q, s = self._global_rows_mean(qs, local, m, delta[0], 2).tolist()
        return q, (s if slope else None)

    def _global_rows_mean(self, local_mean: Optional[Tensor], local: int, m: int, like: Tensor,
                          size: int = 1) -> Tensor:
        """Distributed: the mean over the first ``m`` rows of the global batch, from this
        process's mean ``local_mean`` ((size,) or scalar) over its ``local`` of them (``None``
        when it holds none); one all-reduce. A (size,) tensor."""
        if local:
            part = local_mean.reshape(size) * local  # type: ignore[union-attr]
        else:
            part = torch.zeros(size, dtype=like.dtype, device=like.device)
        return self.comm.all_reduce_sum(part) / m

    @torch.no_grad()
    def _rows_loss(self, x: Tensor, y: Tensor, local: int, m: int, shard: Optional[Shard],
                   out: Optional[Tensor] = None) -> float:
        """The mean loss over the step size's rows, this process's first ``local`` of the
        global ``m`` (global mean when distributed): on the model outputs ``out`` of those rows
        (the stored forward pass, θ before the update) or, if ``None``, a new forward pass."""
        lo = None
        if local:
            if out is None:
                out = forward_output(self.net, x[:local])
            lo = self.loss(out, y[:local])
        if shard is None:
            return float(lo)  # type: ignore[arg-type]
        return float(self._global_rows_mean(lo, local, m, x)[0])

    def _lean(self, t: int, keep: bool) -> Tuple[bool, bool]:
        """(lean, needed later) for step ``t``: *lean* when the factors die with this step
        (``keep`` False, factored damping), so that no candidate's decompositions need to
        coexist with them (:meth:`_choose_gamma`); *needed later* when an update before the
        next refresh will use this step's decompositions (else none are kept at all)."""
        lean = not keep and not self.pre.damping_free_solvers
        return lean, (t + 1) % self.factor_period != 0

    def _choose_gamma(self, t: int, factors, cache, grads, rows, shard: Optional[Shard], slope: bool,
                      keep: bool = True):
        """γ and its :meth:`_candidate`: every ``T_gamma`` steps the best of {ω_γγ, γ, γ/ω_γ}
        by the model change (B.3.2; ties go to the first in that order), else the current γ.

        Peak memory. Only one direction exists at a time: the *guess* — the candidate in the
        position that won the last search (smaller, same or larger γ; γ tends to keep moving
        the same way, or to stay) — is evaluated last and its direction kept; the challengers'
        directions are dropped once their model change is known, and a challenger that wins
        has its direction recomputed (bit-identical; one preconditioning, at most every
        ``T_gamma`` steps and only when the guess was wrong). A candidate clipped onto another
        (γ at a bound) is evaluated once. Decompositions:

        * factors kept past this step (``keep``: moving average, work sharing, a search off
          the refresh schedule) or damping-free solvers (eigen): the guess's decompositions
          are kept (unless only another's are cached), the others' built and freed layer by
          layer, and a winning challenger is decomposed again;
        * otherwise (*lean*, the default schedule): every candidate's decompositions are built
          and freed layer by layer, so that they never coexist with the factors and the
          gradient; then the winner is decomposed once more, releasing the factors layer by
          layer, if a later update needs its decompositions (one more set of decompositions
          per search, none with ``factor_period=1``). Outside a search a refresh likewise
          releases each layer's factors as soon as it is decomposed (or, with nothing needed
          later, decomposes transiently), and the gradient is released layer by layer as the
          direction is made.

        ``grads`` (the step's own list) is emptied once the gradient is no longer needed.
        """
        wd = self.weight_decay
        lean, later = self._lean(t, keep)
        if t % self.T_gamma != 0:
            fresh = lean and self.pre.key(self.gamma + wd) not in cache
            return self.gamma, self._candidate(factors, cache, grads, rows, self.gamma, shard, slope=slope,
                                               transient=fresh and not later, consume=fresh and later,
                                               release_grads=True)
        gammas = list(gamma_candidates(self.gamma, self.omega_gamma, *self.gamma_bounds))
        # a candidate equal to an earlier one (clipped to a bound) can only tie, and ties go first
        unique = [i for i, g in enumerate(gammas) if g not in gammas[:i]]
        cached = [i for i in unique if self.pre.key(gammas[i] + wd) in cache]
        guess = next(i for i in unique if gammas[i] == gammas[self._gamma_last_win])
        lean = lean and not cached
        held = guess if not cached or guess in cached else cached[0]
        scores: Dict[int, tuple] = {}
        delta: Optional[List[Tensor]] = None
        for i in [j for j in unique if j != held] + [held]:
            cand = self._candidate(factors, cache, grads, rows, gammas[i], shard, transient=lean or i != held,
                                   slope=slope)
            scores[i] = cand[1:]
            if i == held:
                delta = cand[0]
            else:  # a challenger's solvers (work sharing) go at once; forget spares damping-free ones
                self.pre.forget(cache, gammas[i] + wd)
            del cand  # a challenger's direction must not live on through the next candidate's solve
        win = min(unique, key=lambda i: scores[i][1])
        gamma = gammas[win]
        self._gamma_last_win = win
        if win != held:
            delta = None  # peak memory: the held direction goes before the winner's is rebuilt
            self.pre.forget(cache, gammas[held] + wd)
            delta = self._direction(factors, cache, grads, gamma + wd, shard, transient=lean and not later,
                                    consume=lean and later)
        grads.clear()
        if win == held and lean and later:  # the winner's decompositions for the updates up to the next refresh
            cache[self.pre.key(gamma + wd)] = [self._layer_solver(factors, i, gamma + wd, True)
                                               for i in range(len(factors))]
        assert delta is not None
        return gamma, (delta, *scores[win])

    def _rows_rho(self, x: Tensor, y: Tensor, shard: Optional[Shard], local: int, m: int, f_old: float,
                  slope: float, alpha: float, dCd: float) -> float:
        """ρ (eq. 42) on the step size's rows after the update: their objective's actual change
        against their quadratic model α·slope + ½α²·δ̃ᵀC̄δ̃ (slope with ηθᵀδ̃; ``f_old`` with
        (η/2)‖θ‖², both before the update)."""
        f_new = self._rows_loss(x, y, local, m, shard)
        if self.weight_decay:
            f_new += 0.5 * self.weight_decay * self.param_norm() ** 2
        return reduction_ratio(f_new, f_old, alpha * slope + 0.5 * alpha * alpha * dCd)

    def _params_dot(self, delta: List[Tensor]) -> float:
        """θᵀδ without copying θ (the weight-decay term of the slope, η θᵀδ)."""
        parts = [(p.detach() * t).sum() for p, t in self.param_pairs(delta)]
        return float(torch.stack(parts).sum())  # one host synchronisation

    @torch.no_grad()
    def _verified_update(self, x: Tensor, y: Tensor, shard: Optional[Shard], delta: List[Tensor], alpha: float,
                         dg: float, dGd: float, dCd: float, delta_norm: float,
                         f_old: float) -> Optional[Tuple[float, float, float, int]]:
        """The step guard (see the class docstring): θ ← θ + αδ̃ only if the loss confirms it.

        Needs ``step_guard`` and ``length_average`` set (the caller's trigger).
        Returns (α, model change, ρ, objective evaluations) of the step kept, or ``None`` with
        θ exactly as before. Raises τ (and so shrinks α) after each unconfirmed try.
        """
        params = self.params()
        saved = [p.detach().clone() for p in params]
        delta_sq = delta_norm * delta_norm
        limit = self.step_guard * self.length_average / delta_norm  # retries stay within the guard's radius
        for k in range(1, self.guard_tries + 2):
            if k > 1:
                for p, s in zip(params, saved):
                    p.copy_(s)
            ok = self.try_add_to_params(delta, alpha)
            f_new = self.objective(x, y, reduce=shard) if ok else math.inf
            change = alpha * dg + 0.5 * alpha * alpha * dCd
            rho = reduction_ratio(f_new, f_old, change)
            if rho >= self.guard_rho:
                return alpha, change, rho, k
            c = curvature_along(f_new, f_old, alpha, dg)
            self.tau = guard_tau(self.tau, self.omega_tau, c, dGd, delta_sq, self.weight_decay, *self.tau_bounds)
            dCd = dGd + (self.tau + self.weight_decay) * delta_sq
            alpha = min(-dg / dCd, 0.5 * alpha, limit)
        for p, s in zip(params, saved):
            p.copy_(s)
        return None

    def _reject(self, t: int, loss: float, reason: str) -> StepInfo:
        self.tau = min(self.tau / self.omega_tau, self.tau_bounds[1])
        self.gamma = min(self.gamma / self.omega_gamma, self.gamma_bounds[1])
        self.rejected_count += 1
        return StepInfo(step=t, loss=loss, tau=self.tau, gamma=self.gamma, rejected=True, reason=reason)

    # -- public ----------------------------------------------------------------------------
    def direction(self, x: Tensor, y: Tensor) -> List[Tensor]:
        """δ̃ = −C̃⁻¹g for this batch at the current damping, per layer; no state changes.

        Per-layer ``[W | b]`` matrices, before the step size (for the alignment analysis).
        """
        gen_state = self.generator.get_state()
        dev_gen, dev_pending = self._device_generator, self._device_rng_state
        dev_state = None if dev_gen is None else dev_gen.get_state()
        try:
            trace, loss, grads, shard = self.forward_backward_shard(x, y)
            if trace is None or grads is None:
                raise ValueError("the loss is not finite on this batch")
            new = self.pre.estimate(trace, y, self._kfac_generator(x), shard=shard)
            factors = self.pre.blend(new)
            share = self.share if shard is not None else None
            return [d.neg_() for d in self.pre.solve(factors, grads, self.gamma + self.weight_decay, {}, share=share)]
        finally:
            self.generator.set_state(gen_state)
            self._device_generator, self._device_rng_state = dev_gen, dev_pending  # as before the call
            if dev_gen is not None:
                dev_gen.set_state(dev_state)

    def step(self, x: Tensor, y: Tensor) -> StepInfo:
        """One update on the minibatch (x, y); returns its :class:`StepInfo`."""
        self._timer = timer = PhaseTimer(self.timing, x.device)
        begun = self.begin_step(x, y)
        if isinstance(begun, StepInfo):
            return begun
        t, trace, loss, grads, shard = begun
        del begun
        try:
            with timer.phase("factors"):
                factors, cache, refreshed = self._curvature(trace, y, x, shard)
            rows, rows_loss, rows_dev, full_rows = self._checked_rows(trace, x, y, loss, shard)
            if rows[0] is not None and rows[0].output.shape[0] < trace.output.shape[0]:
                # peak memory: with the factors built, only the step size's rows of the trace
                # are needed; copied out, the rest is freed before the decompositions
                rows = (rows[0].copied(), rows[1], rows[2])
            del trace
            # ρ (eq. 42) on the step size's rows, where the model's curvature was measured
            rows_rho = t % self.T_tau == 0 and self.step_size_fraction < 1.0 and not full_rows
            keep = self._keeps_factors()
            with timer.phase("bookkeeping"):
                grad_norm = _norm(grads)
            # the gradient goes as soon as the direction no longer needs it, and factors that die
            # with this step as soon as they are decomposed (peak memory); committed factors
            # (a step between refreshes) are never consumed
            gamma, (delta, alpha, change, dGd, dg, dCd, rows_slope) = self._choose_gamma(
                t, factors, cache, grads, rows, shard, rows_rho, keep or not refreshed)
            if refreshed and not keep:
                factors = None  # peak memory: from here on only the decompositions are needed
        except LinalgFailure as e:
            return self._reject(t, loss, f"curvature: {e}")
        if not math.isfinite(alpha) or alpha <= 0:
            return self._reject(t, loss, f"bad step size {alpha}")
        timer.start("bookkeeping")
        f_old = loss + (0.5 * self.weight_decay * self.param_norm() ** 2 if self.weight_decay else 0.0)
        rows_old = None
        rows_local, rows_m = (0 if rows[0] is None else rows[0].output.shape[0]), rows[2]
        if rows_rho:  # the rows' objective before the update, and its model slope with weight decay
            if rows_loss is None:
                rows_loss = self._rows_loss(x, y, rows_local, rows_m, shard, None if rows[0] is None else rows[0].output)
            rows_old = rows_loss + (f_old - loss)
            if self.weight_decay:
                rows_slope = rows_slope + self.weight_decay * self._params_dot(delta)
        delta_norm = _norm(delta)
        update_norm = alpha * delta_norm
        del rows, grads  # peak memory: ρ's forward pass below needs neither
        rho, checks = None, 0
        if (self.step_guard is not None and self.length_average is not None
                and update_norm > self.step_guard * self.length_average):
            verified = self._verified_update(x, y, shard, delta, alpha, dg, dGd, dCd, delta_norm, f_old)
            if verified is None:
                timer.stop("bookkeeping")
                self.guarded_count += 1
                return self._reject(t, loss, f"step guard: a step {update_norm / self.length_average:.3g}× the "
                                             f"average length was not confirmed by the loss")
            alpha, change, rho, checks = verified
            update_norm = alpha * delta_norm
            self.guarded_count += int(checks > 1)
        elif not self.try_add_to_params(delta, alpha):
            timer.stop("bookkeeping")
            return self._reject(t, loss, "non-finite parameters after the update")
        del delta
        # accepted: commit the curvature state
        if refreshed:
            self.pre.commit(factors, cache, keep_factors=keep)
        self.gamma = gamma
        if t % self.T_tau == 0 and checks <= 1:  # after a backtrack the guard has set τ already
            if rho is None and rows_old is not None:
                assert rows_slope is not None
                rho = self._rows_rho(x, y, shard, rows_local, rows_m, rows_old, rows_slope, alpha, dCd)
            elif rho is None:
                rho = reduction_ratio(self.objective(x, y, reduce=shard), f_old, change)
            self.tau = levenberg_marquardt(self.tau, rho, self.omega_tau, self.rho_low, self.rho_high, *self.tau_bounds)
        self.length_average = update_norm if self.length_average is None else 0.9 * self.length_average + 0.1 * update_norm
        self.accepted += 1
        self.update_average()
        info = StepInfo(step=t, loss=loss, alpha=alpha, rho=rho, tau=self.tau, gamma=self.gamma,
                        grad_norm=grad_norm, update_norm=update_norm, param_norm=self.param_norm(),
                        model_decrease=change, extra={"dGd": dGd, "refreshed": float(refreshed)})
        if checks:
            info.extra["guard_checks"] = float(checks)
        if rows_dev is not None:
            info.extra["rows_loss_deviation"] = rows_dev
        if full_rows:
            info.extra["full_rows"] = 1.0
        timer.stop("bookkeeping")
        info.extra.update(timer.times)
        return info

    # -- state -----------------------------------------------------------------------------
    def config(self) -> dict:
        return {"curvature": self.curvature, "damping": self.pre.damping, "T_tau": self.T_tau, "T_gamma": self.T_gamma,
                "omega_tau": self.omega_tau, "omega_gamma": self.omega_gamma, "rho_low": self.rho_low,
                "rho_high": self.rho_high, "weight_decay": self.weight_decay, "curvature_ema": self.pre.ema,
                "factor_period": self.factor_period, "samples": self.pre.samples, "max_alpha": self.max_alpha,
                "seed": self.seed, "explicit_inverse": self.pre.explicit_inverse,
                "step_size_fraction": self.step_size_fraction,
                "solve_dtype": None if self.pre.solve_dtype is None else str(self.pre.solve_dtype).replace("torch.", ""),
                "step_guard": self.step_guard, "guard_rho": self.guard_rho, "guard_tries": self.guard_tries,
                "step_size_check": self.step_size_check}

    _SCHEDULE_KEYS = ("T_tau", "T_gamma", "omega_tau", "omega_gamma", "rho_low", "rho_high", "weight_decay",
                      "factor_period", "max_alpha", "seed", "step_size_fraction", "step_guard", "guard_rho",
                      "guard_tries", "step_size_check")

    def _load_config(self, cfg: dict) -> None:
        """Adopt the hyper-parameters of a :meth:`config` (keys absent from older ones are kept)."""
        for k in self._SCHEDULE_KEYS:
            if k in cfg:
                setattr(self, k, cfg[k])
        if "step_size_check" not in cfg:  # a checkpoint from before the check resumes as it ran
            self.step_size_check = None
        pre = self.pre
        pre.damping = cfg.get("damping", pre.damping)
        pre.ema = cfg.get("curvature_ema", pre.ema)
        pre.samples = cfg.get("samples", pre.samples)
        pre.explicit_inverse = cfg.get("explicit_inverse", pre.explicit_inverse)
        if "solve_dtype" in cfg:
            pre.solve_dtype = None if cfg["solve_dtype"] is None else getattr(torch, cfg["solve_dtype"])

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically (not the model's parameters)."""
        sd = self.base_state()
        sd.update({"tau": self.tau, "gamma": self.gamma, "curvature_state": self.pre.state_dict(),
                   "rng": self.generator.get_state(), "config": self.config(),
                   "device_rng": (self._device_generator.get_state() if self._device_generator is not None
                                  else self._device_rng_state),
                   "length_average": self.length_average, "guarded": self.guarded_count})
        return sd

    def load_state_dict(self, sd: dict) -> None:
        """Restore a :meth:`state_dict`; raises ``ValueError`` if it is for another model or curvature.

        As ``torch.optim.Optimizer.load_state_dict`` does with a param group's options, the
        saved hyper-parameters (schedules, damping constants, amortisation, the step guard,
        the solver's options) replace the constructor's, so that a run resumed after a
        change of gnopt's defaults continues exactly as it was started.
        """
        self.load_base_state(sd)
        cfg = sd["config"]
        if cfg["curvature"] != self.curvature:
            raise ValueError(f"the state dict is for curvature {cfg['curvature']!r}, not {self.curvature!r}")
        self._load_config(cfg)
        self.pre.load_state_dict(sd["curvature_state"])
        self.tau, self.gamma = float(sd["tau"]), float(sd["gamma"])
        self.length_average = sd.get("length_average")  # absent in checkpoints before the step guard
        self.guarded_count = int(sd.get("guarded", 0))
        self.generator.set_state(sd["rng"].cpu())  # generator states are CPU byte tensors
        self._device_generator = None
        dev = sd.get("device_rng")  # absent before 11-30: the device generator is then seeded afresh
        self._device_rng_state = None if dev is None else dev.cpu()
