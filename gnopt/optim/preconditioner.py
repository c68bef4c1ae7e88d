"""The stateful curvature of the optimiser: factor moving averages and cached solvers.

A :class:`Preconditioner` owns, per layer, the current curvature (Kronecker factors
``(Q, G)``, or the dense block for ``"block"``) and the decompositions derived from it, and
solves the damped systems of eq. (33)–(38): ``(G̃_λ + k I) δ_λ = g_λ`` with ``k = γ + η``.
It never touches the model; the optimiser commits a new state only after a step is accepted.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..curvature.exact import dense_blocks, per_example_preactivation
from ..curvature.factors import factors_from_trace
from ..curvature.trace import Trace
from ..layers import Network
from ..linalg import EigenFactors, FactoredFactors, LinalgFailure
from ..losses import Loss
from ..numerics import all_finite

CURVATURES = ("kfra", "kflr", "kfac", "block")
DAMPINGS = ("factored", "eigen")


def _check_finite(curvature: List[List[Tensor]], what: str) -> None:
    """``LinalgFailure`` naming the first layer whose curvature matrices are not all finite."""
    for i, mats in enumerate(curvature):
        if not all_finite(mats):
            raise LinalgFailure(f"the {what} of layer {i} is not finite")


class _BlockEigen:
    """Eigendecomposition of a dense PSD block B = U diag(s) Uᵀ; solves (B + kI) x = v."""

    def __init__(self, B: Tensor) -> None:
        try:
            s, U = torch.linalg.eigh(B.double())
        except RuntimeError as e:  # pragma: no cover - eigh on a symmetric finite matrix
            raise LinalgFailure(f"eigendecomposition of a dense GN block failed: {e}") from e
        self.s, self.U, self.dtype = s.clamp(min=0), U, B.dtype

    def solve(self, V: Tensor, k: float) -> Tensor:
        v = V.reshape(-1).double()
        x = self.U @ ((self.U.T @ v) / (self.s + k))
        return x.to(self.dtype).reshape(V.shape)


class Preconditioner:
    """Curvature state: ``curvature`` in kfra/kflr/kfac/block, ``damping`` factored/eigen.

    ``solve_dtype``: decompose and solve in this dtype (e.g. ``torch.float64`` for float32
    models); the directions come back in the gradients' dtype. ``None``: the factors' dtype.

    ``ema``: the moving-average coefficient of the curvature (0 = current batch only); the
    effective coefficient is min(ema, 1 − 1/n) after n updates, so early averages are exact
    means (as the KFAC statistics in REPRODUCTION.md §5).
    """

    def __init__(self, net: Network, loss: Loss, curvature: str, damping: str, ema: float = 0.0,
                 samples: int = 1, chunk_size: Optional[int] = None, explicit_inverse: bool = False,
                 solve_dtype: Optional[torch.dtype] = None) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"unknown curvature {curvature!r}; use one of {CURVATURES}")
        if damping not in DAMPINGS:
            raise ValueError(f"unknown damping {damping!r}; use one of {DAMPINGS}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"curvature_ema must be in [0, 1); got {ema}")
        self.net, self.loss, self.curvature, self.damping = net, loss, curvature, damping
        self.ema, self.samples, self.chunk_size = ema, samples, chunk_size
        self.explicit_inverse = explicit_inverse
        self.solve_dtype = solve_dtype
        self.factors: Optional[List[List[Tensor]]] = None  # per layer [Q, G] or [B]
        self.updates = 0
        self._cache: Dict[object, list] = {}

    # -- curvature -------------------------------------------------------------------------
    def estimate(self, trace: Trace, y: Tensor, generator: Optional[torch.Generator], *,
                 shard=None) -> List[List[Tensor]]:
        """Fresh curvature of this batch (not committed). Raises ``LinalgFailure`` if non-finite.

        ``shard`` (a :class:`gnopt.distributed.Shard`, data-parallel training): the global
        curvature of all ranks' examples; the dense blocks are all-reduced (coalesced).
        """
        if self.curvature == "block":
            pe = per_example_preactivation(self.net, trace, y, self.loss, hessian=False)
            blocks = dense_blocks(self.net, trace, pe)
            if shard is not None:
                blocks = shard.mean_many(blocks)
            new = [[B] for B in blocks]
        elif shard is None:
            fs = factors_from_trace(self.net, trace, y, self.loss, self.curvature, self.samples, generator,
                                    self.chunk_size)
            new = [[f.Q, f.G] for f in fs]
        else:
            fs = factors_from_trace(self.net, trace, y, self.loss, self.curvature, self.samples, generator,
                                    self.chunk_size, reduce=shard.mean, global_rows=shard.rows)
            new = [[f.Q, f.G] for f in fs]
        _check_finite(new, "curvature")
        return new

    def blend(self, new: List[List[Tensor]]) -> List[List[Tensor]]:
        """The moving average of the stored curvature with ``new`` (not committed).

        Raises ``LinalgFailure`` if an average is not finite (the solvers do not check again)."""
        if self.factors is None or self.ema == 0.0:
            return new
        beta = min(self.ema, 1.0 - 1.0 / (self.updates + 1))
        out = [[beta * o + (1 - beta) * n for o, n in zip(old, nw)] for old, nw in zip(self.factors, new)]
        _check_finite(out, "averaged curvature")  # finite unless an entry overflowed; the solvers trust this check
        return out

    def commit(self, factors: List[List[Tensor]], cache: Dict[object, list], keep_factors: bool = True) -> None:
        """Adopt a step's curvature. ``keep_factors=False`` stores only the decompositions in
        ``cache`` (peak memory: the optimiser knows when no other damping will be needed
        before the next refresh); the factors are then freed."""
        self.factors = factors if keep_factors else None
        self.updates += 1
        self._cache = cache

    # -- solves ----------------------------------------------------------------------------
    def key(self, k: float) -> object:
        """The cache key of the solvers for damping ``k`` (one for every k with eigen damping)."""
        return "eig" if (self.damping == "eigen" or self.curvature == "block") else ("fac", k)

    @property
    def damping_free_solvers(self) -> bool:
        """Whether one decomposition serves every damping (eigen damping, dense blocks)."""
        return self.key(0.0) == "eig"

    def can_solve(self, k: float) -> bool:
        """Whether the committed curvature gives the solvers for damping ``k`` (stored
        factors, or cached solvers for this ``k``) without estimating new factors."""
        return self.factors is not None or self.key(k) in self._cache

    def solver(self, factors: List[List[Tensor]], k: float, cache: Dict[object, list],
               owned: Optional[Sequence[bool]] = None) -> list:
        """Per-layer solver objects for damping ``k``, memoised in ``cache``.

        ``owned`` (work sharing): build only the layers marked True; the others are ``None``.
        """
        key = self.key(k)
        if key in cache:
            return cache[key]
        # The factors reach here checked (estimate, blend, load_state_dict); a cast to a
        # narrower solve dtype could overflow, so the solvers check them again after one.
        trusted = True
        if self.solve_dtype is not None:
            trusted = all(torch.finfo(self.solve_dtype).bits >= torch.finfo(m.dtype).bits for f in factors for m in f)
            factors = [[m.to(self.solve_dtype) for m in f] for f in factors]
        owned = [True] * len(factors) if owned is None else owned
        cache[key] = [self._layer_solver(f, k, trusted) if own else None for f, own in zip(factors, owned)]
        return cache[key]

    def _layer_solver(self, mats: List[Tensor], k: float, trusted: bool) -> object:
        """One layer's solver for damping ``k`` from its curvature ``[Q, G]`` or ``[B]``."""
        if self.curvature == "block":
            return _BlockEigen(mats[0])
        Q, G = mats
        if self.damping == "eigen":
            return EigenFactors.from_factors(G, Q)
        return FactoredFactors.from_factors(G, Q, k, explicit_inverse=self.explicit_inverse, assume_finite=trusted)

    def release(self, keep_factors: bool) -> None:
        """Free the committed decompositions (and, unless ``keep_factors``, the factors)."""
        self._cache = {}
        if not keep_factors:
            self.factors = None

    def forget(self, cache: Dict[object, list], k: float) -> None:
        """Drop the damping-specific solvers for ``k`` (factored damping; eigen ones are kept)."""
        cache.pop(("fac", k), None)

    def solve(self, factors: List[List[Tensor]], grads: Sequence[Tensor], k: float,
              cache: Dict[object, list], *, share=None) -> List[Tensor]:
        """Per-layer δ_λ = C̃_λ⁻¹ g_λ with C̃ = G̃ + kI (eq. 34–36).

        ``share`` (a :class:`gnopt.distributed.WorkShare`): this rank decomposes and solves
        only its own layers and the results are gathered from their owners (one coalesced
        all-reduce); a failure on any rank raises ``LinalgFailure`` on every rank.
        """
        if share is not None:
            return self._solve_shared(factors, grads, k, cache, share)
        solvers = self.solver(factors, k, cache)
        return [self.apply(s, g, k) for s, g in zip(solvers, grads)]

    @staticmethod
    def apply(solver: object, g: Tensor, k: float) -> Tensor:
        """One layer's solve (G̃_λ + kI)⁻¹ g by its solver object."""
        if isinstance(solver, FactoredFactors):
            return solver.solve(g, assume_finite=True)  # the optimiser's gradients are checked; δ is checked here
        return solver.solve(g, k)  # type: ignore[attr-defined]

    def _solve_shared(self, factors, grads, k, cache, share) -> List[Tensor]:
        owned = [share.owns(i) for i in range(len(grads))]
        parts = [torch.zeros_like(g) for g in grads]
        err: Optional[LinalgFailure] = None
        try:
            solvers = self.solver(factors, k, cache, owned=owned)
            for i, (s, g) in enumerate(zip(solvers, grads)):
                if owned[i]:
                    parts[i] = s.solve(g) if isinstance(s, FactoredFactors) else s.solve(g, k)
        except LinalgFailure as e:
            err = e
            parts = [torch.zeros_like(g) for g in grads]
        out, failed = share.gather(parts, err is not None)
        if failed:
            mine = f" (here: {err})" if err is not None else ""
            raise LinalgFailure(f"a damped solve failed on {failed} rank(s){mine}")
        return out

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Factors and update count; when the factors were freed (see :meth:`commit`), the
        cached solvers instead (immutable objects, shared, not copied), so that a resumed
        run solves exactly as the uninterrupted one."""
        sd: dict = {"factors": None if self.factors is None else [[m.clone() for m in f] for f in self.factors],
                    "updates": self.updates}
        if self.factors is None and self._cache:
            sd["solvers"] = {key: list(v) for key, v in self._cache.items()}
        return sd

    def load_state_dict(self, sd: dict) -> None:
        fs = sd["factors"]
        if fs is not None:
            expect = self.shapes()
            got = [[tuple(m.shape) for m in f] for f in fs]
            if got != expect:
                raise ValueError(f"the optimiser state's curvature has shapes {got}; this model needs {expect}")
            for i, f in enumerate(fs):  # the solvers trust committed factors (see solver)
                if not all_finite(f):
                    raise ValueError(f"the optimiser state's curvature of layer {i} contains NaN or Inf")
        solvers = sd.get("solvers") or {}  # absent in checkpoints that kept their factors
        for key, v in solvers.items():
            if len(v) != len(self.net.stages) or any(x is None for x in v):
                raise ValueError(f"the optimiser state holds solvers for {sum(x is not None for x in v)} layers; "
                                 f"this model has {len(self.net.stages)}")
        self.factors = None if fs is None else [[m.clone() for m in f] for f in fs]
        self.updates = int(sd["updates"])
        self._cache = {key: list(v) for key, v in solvers.items()}

    def shapes(self) -> List[List[tuple]]:
        out = []
        for st in self.net.stages:
            di = st.d_in + int(st.has_bias)
            out.append([(st.d_out * di, st.d_out * di)] if self.curvature == "block" else [(di, di), (st.d_out, st.d_out)])
        return out
