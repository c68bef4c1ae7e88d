"""Losses with their output Hessians ``H_L``, square roots (eq. 23) and samplers (App. C.3).

Convention (DESIGN.md): the per-example loss is summed over output dimensions and the
objective is its mean over the batch. ``h`` is the model output ``h_L`` of shape (N, K).

Every loss provides
  * ``per_example(h, y)`` → (N,) and ``__call__(h, y)`` → the batch mean;
  * ``grad(h, y)`` → (N, K): ∂E_n/∂h_n (the seed of back-propagation, used in D_λ, eq. 10);
  * ``hessian(h, y)`` → (N, K, K): the output Hessian ``H_L`` (eq. 8's initial value);
  * ``hessian_sqrt(h, y)`` → (N, K, R) with ``S S^T = H_L`` (eq. 23) for Gauss-Newton use;
  * ``hessian_vp(h, y, u)`` → (N, K): ``H_L u`` per example (the R-operator step, eq. 41);
  * ``sample_grads(h, samples, generator)`` → (S, N, K): gradients ∂E/∂h at targets drawn
    from the model's predictive distribution ``p_θ(y|x)`` (KFAC, eq. 59).

Named losses (``"mse"``, ``"bce"``, ``"ce"``) have closed forms. Custom per-example losses
(:class:`CustomLoss`, e.g. the binary mixture of eq. 27) get ``H_L`` from autograd; as such a
Hessian can be indefinite, its Gauss-Newton use projects it onto the PSD cone by clamping
negative eigenvalues to zero (``psd_hessian``); :meth:`Loss.hessian` itself stays the true
Hessian, as the block Hessian recursion (eq. 8) needs.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad as fgrad
from torch.func import hessian as fhessian
from torch.func import vmap


class Loss:
    """Base class: a per-example loss of the network output ``h`` (N, K) and targets ``y``."""

    name: str = "loss"
    psd: bool = True  # whether ``hessian`` is PSD by construction

    def check(self, h: Tensor, y: Tensor) -> None:
        """Raise ``ValueError`` on targets of the wrong type or shape for this loss."""

    def per_example(self, h: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, h: Tensor, y: Tensor) -> Tensor:
        return self.per_example(h, y).mean()

    def grad(self, h: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def hessian(self, h: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def psd_hessian(self, h: Tensor, y: Tensor) -> Tensor:
        """``H_L`` for Gauss-Newton use, (N, K, K); PSD (projected if need be)."""
        return self.hessian(h, y)

    def hessian_sqrt(self, h: Tensor, y: Tensor) -> Tensor:
        """(N, K, R) with ``S S^T = psd_hessian`` (eq. 23). Default: by eigendecomposition."""
        return _psd_sqrt(self.psd_hessian(h, y))

    def hessian_vp(self, h: Tensor, y: Tensor, u: Tensor) -> Tensor:
        """``psd_hessian(h, y) @ u`` per example: (N, K)."""
        return torch.einsum("nij,nj->ni", self.psd_hessian(h, y), u)

    def sqrt_rank(self, h: Tensor) -> int:
        """R, the number of columns of :meth:`hessian_sqrt`."""
        return h.shape[1]

    def sqrt_diagonal(self, h: Tensor, y: Tensor) -> Optional[Tensor]:
        """(N, K) ``c`` if the square root is ``diag(c_n)`` for every example, else ``None``.

        KFLR uses it to skip the product of the one-hot columns with the top weight matrix.
        """
        return None

    def sqrt_columns(self, h: Tensor, y: Tensor, start: int, stop: int) -> Tensor:
        """Columns ``start:stop`` of the square root, as (stop−start, N, K).

        KFLR (eq. 24–25) back-propagates these in chunks so that its memory stays bounded.
        """
        return self.hessian_sqrt(h, y).permute(2, 0, 1)[start:stop]

    def mean_gn_top(self, h: Tensor, y: Tensor, d1: Tensor) -> Tensor:
        """``(1/N) Σ_n diag(d1_n) H_n diag(d1_n)``, (K, K): the exact E[𝒢] at the top layer.

        ``d1`` (N, K) is f' of the transfer function after the last linear layer (ones if
        none). This initialises KFRA (eq. 26 / Algorithm 1) with the exact expected value.
        """
        H = self.psd_hessian(h, y)
        return torch.einsum("ni,nij,nj->ij", d1, H, d1) / h.shape[0]

    def sample_grads(self, h: Tensor, samples: int = 1, generator: Optional[torch.Generator] = None) -> Tensor:
        raise ValueError(
            f"KFAC needs samples from the model's predictive distribution, but the loss "
            f"{self.name!r} has no sampler; give the CustomLoss a `sampler=` or use "
            "curvature 'kflr'/'kfra'"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _psd_sqrt(H: Tensor) -> Tensor:
    """A square root S (N, K, K) with S S^T = P(H), P the projection onto the PSD cone."""
    Hs = 0.5 * (H + H.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(Hs)
    return evecs * evals.clamp(min=0).sqrt().unsqueeze(-2)


def _diagonal_columns(c: Tensor, start: int, stop: int) -> Tensor:
    """Columns ``start:stop`` of ``diag(c_n)`` for every example: (stop−start, N, K)."""
    cols = torch.zeros((stop - start,) + tuple(c.shape), dtype=c.dtype, device=c.device)
    r = torch.arange(stop - start, device=c.device)
    cols[r, :, start + r] = c[:, start:stop].T
    return cols


def _check_float_like(name: str, h: Tensor, y: Tensor) -> None:
    if not torch.is_floating_point(y):
        raise ValueError(f"loss {name!r} needs floating-point targets shaped like the output {tuple(h.shape)}; got dtype {y.dtype}")
    if y.shape != h.shape:
        raise ValueError(f"loss {name!r}: targets of shape {tuple(y.shape)} do not match the model output {tuple(h.shape)}")


class MSELoss(Loss):
    """``E = ½‖h − y‖²`` summed over outputs, so ``H_L = I`` (paper footnote 4).

    Predictive distribution: ``y ~ N(h, I)``, so sampled gradients are ``−ε``, ε ~ N(0, I).
    """

    name = "mse"

    def check(self, h: Tensor, y: Tensor) -> None:
        _check_float_like(self.name, h, y)

    def per_example(self, h: Tensor, y: Tensor) -> Tensor:
        return 0.5 * ((h - y) ** 2).sum(-1)

    def grad(self, h: Tensor, y: Tensor) -> Tensor:
        return h - y

    def hessian(self, h: Tensor, y: Tensor) -> Tensor:
        n, k = h.shape
        return torch.eye(k, dtype=h.dtype, device=h.device).expand(n, k, k).clone()

    def hessian_sqrt(self, h: Tensor, y: Tensor) -> Tensor:
        return self.hessian(h, y)

    def hessian_vp(self, h: Tensor, y: Tensor, u: Tensor) -> Tensor:
        return u

    def sqrt_diagonal(self, h: Tensor, y: Tensor) -> Optional[Tensor]:
        return torch.ones_like(h)

    def sqrt_columns(self, h: Tensor, y: Tensor, start: int, stop: int) -> Tensor:
        return _diagonal_columns(torch.ones_like(h), start, stop)

    def mean_gn_top(self, h: Tensor, y: Tensor, d1: Tensor) -> Tensor:
        return torch.diag((d1 * d1).mean(0))

    def sample_grads(self, h: Tensor, samples: int = 1, generator: Optional[torch.Generator] = None) -> Tensor:
        eps = torch.randn((samples,) + tuple(h.shape), generator=generator, dtype=h.dtype, device=h.device)
        return -eps


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits, any number of outputs: ``H_L = diag(σ(h)(1−σ(h)))``.

    Targets are floats in [0, 1] (soft targets, e.g. grey levels read as Bernoulli means).
    """

    name = "bce"

    def check(self, h: Tensor, y: Tensor) -> None:
        _check_float_like(self.name, h, y)
        if y.numel() and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"loss 'bce' needs targets in [0, 1]; got values in [{float(y.min())}, {float(y.max())}]")

    def per_example(self, h: Tensor, y: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(h, y, reduction="none").sum(-1)

    def grad(self, h: Tensor, y: Tensor) -> Tensor:
        return torch.sigmoid(h) - y

    def _curv(self, h: Tensor) -> Tensor:
        s = torch.sigmoid(h)
        return s * (1 - s)

    def hessian(self, h: Tensor, y: Tensor) -> Tensor:
        return torch.diag_embed(self._curv(h))

    def hessian_sqrt(self, h: Tensor, y: Tensor) -> Tensor:
        return torch.diag_embed(self._curv(h).sqrt())

    def hessian_vp(self, h: Tensor, y: Tensor, u: Tensor) -> Tensor:
        return self._curv(h) * u

    def sqrt_diagonal(self, h: Tensor, y: Tensor) -> Optional[Tensor]:
        return self._curv(h).sqrt()

    def sqrt_columns(self, h: Tensor, y: Tensor, start: int, stop: int) -> Tensor:
        return _diagonal_columns(self._curv(h).sqrt(), start, stop)

    def mean_gn_top(self, h: Tensor, y: Tensor, d1: Tensor) -> Tensor:
        return torch.diag((d1 * d1 * self._curv(h)).mean(0))

    def sample_grads(self, h: Tensor, samples: int = 1, generator: Optional[torch.Generator] = None) -> Tensor:
        p = torch.sigmoid(h).expand((samples,) + tuple(h.shape))
        # ŷ ~ Bernoulli(p) as [u < p] for u ~ U[0, 1): a quarter of torch.bernoulli's time on CPU
        u = torch.rand(p.shape, generator=generator, dtype=h.dtype, device=h.device)
        return p - (u < p).to(h.dtype)


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy with integer class targets: ``H_L = diag(p) − p pᵀ``.

    Square root (eq. 23): ``S = diag(√p) − p √pᵀ``, since Σp = 1 gives S Sᵀ = diag(p) − ppᵀ.
    """

    name = "ce"

    def check(self, h: Tensor, y: Tensor) -> None:
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"loss 'ce' needs integer class targets of shape (N,); got dtype {y.dtype}")
        if y.shape != h.shape[:1]:
            raise ValueError(f"loss 'ce': targets of shape {tuple(y.shape)} do not match a batch of {h.shape[0]}")
        if y.numel() and (y.min() < 0 or y.max() >= h.shape[1]):
            raise ValueError(f"loss 'ce': class targets must be in [0, {h.shape[1]}); got [{int(y.min())}, {int(y.max())}]")

    def per_example(self, h: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(h, y.long(), reduction="none")

    def grad(self, h: Tensor, y: Tensor) -> Tensor:
        return torch.softmax(h, -1) - F.one_hot(y.long(), h.shape[1]).to(h.dtype)

    def hessian(self, h: Tensor, y: Tensor) -> Tensor:
        p = torch.softmax(h, -1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)

    def hessian_sqrt(self, h: Tensor, y: Tensor) -> Tensor:
        p = torch.softmax(h, -1)
        return torch.diag_embed(p.sqrt()) - p.unsqueeze(-1) * p.sqrt().unsqueeze(-2)

    def hessian_vp(self, h: Tensor, y: Tensor, u: Tensor) -> Tensor:
        p = torch.softmax(h, -1)
        return p * u - p * (p * u).sum(-1, keepdim=True)

    def mean_gn_top(self, h: Tensor, y: Tensor, d1: Tensor) -> Tensor:
        p = torch.softmax(h, -1)
        dp = d1 * p
        return torch.diag((d1 * dp).mean(0)) - dp.T @ dp / h.shape[0]

    def sample_grads(self, h: Tensor, samples: int = 1, generator: Optional[torch.Generator] = None) -> Tensor:
        p = torch.softmax(h, -1)
        idx = torch.multinomial(p, samples, replacement=True, generator=generator).T  # (S, N)
        return p.unsqueeze(0) - F.one_hot(idx, h.shape[1]).to(h.dtype)


PerExampleFn = Callable[[Tensor, Tensor], Tensor]
Sampler = Callable[[Tensor, int, Optional[torch.Generator]], Tensor]


class CustomLoss(Loss):
    """A loss given by a per-example function ``fn(h_n, y_n) -> scalar`` (``h_n``: (K,)).

    Gradients and Hessians come from ``torch.func`` (vmapped over the batch). The output
    Hessian of a non-exponential-family loss (eq. 27) need not be PSD; for Gauss-Newton use
    (``psd_hessian``, ``hessian_sqrt``, ``hessian_vp``) it is projected onto the PSD cone by
    clamping its negative eigenvalues to zero, which is the nearest PSD matrix in Frobenius
    norm. ``sampler(h, samples, generator) -> y`` of shape (S, N, ...) draws targets from
    the model's predictive distribution; it is needed only by KFAC.
    """

    psd = False

    def __init__(self, fn: PerExampleFn, sampler: Optional[Sampler] = None, name: str = "custom",
                 check: Optional[Callable[[Tensor, Tensor], None]] = None) -> None:
        self.fn = fn
        self.sampler = sampler
        self.name = name
        self._check = check

    def check(self, h: Tensor, y: Tensor) -> None:
        if y.shape[:1] != h.shape[:1]:
            raise ValueError(f"loss {self.name!r}: {y.shape[0] if y.dim() else 'scalar'} targets for a batch of {h.shape[0]}")
        if self._check is not None:
            self._check(h, y)

    def per_example(self, h: Tensor, y: Tensor) -> Tensor:
        return vmap(self.fn)(h, y)

    def grad(self, h: Tensor, y: Tensor) -> Tensor:
        return vmap(fgrad(self.fn))(h, y)

    def hessian(self, h: Tensor, y: Tensor) -> Tensor:
        H = vmap(fhessian(self.fn))(h, y)
        return 0.5 * (H + H.transpose(-1, -2))

    def psd_hessian(self, h: Tensor, y: Tensor) -> Tensor:
        S = self.hessian_sqrt(h, y)
        return S @ S.transpose(-1, -2)

    def hessian_sqrt(self, h: Tensor, y: Tensor) -> Tensor:
        return _psd_sqrt(self.hessian(h, y))

    def sample_grads(self, h: Tensor, samples: int = 1, generator: Optional[torch.Generator] = None) -> Tensor:
        if self.sampler is None:
            return super().sample_grads(h, samples, generator)
        ys = self.sampler(h.detach(), samples, generator)  # (S, N, ...)
        return vmap(vmap(fgrad(self.fn)), in_dims=(None, 0))(h, ys)

    def __repr__(self) -> str:
        return f"CustomLoss(name={self.name!r})"


def _mixture_nll(h: Tensor, y: Tensor) -> Tensor:
    """−log p(y|h) of eq. (27) for one example, h = (h1, h2, h3), y ∈ {0, 1}; stable in logs."""
    ls = F.logsigmoid
    comp1 = ls(h[0]) + y * ls(h[1]) + (1 - y) * ls(-h[1])
    comp2 = ls(-h[0]) + y * ls(h[2]) + (1 - y) * ls(-h[2])
    return -torch.logaddexp(comp1, comp2)


def _mixture_sample(h: Tensor, samples: int, generator: Optional[torch.Generator]) -> Tensor:
    s = torch.sigmoid(h)
    p1 = s[:, 0] * s[:, 1] + (1 - s[:, 0]) * s[:, 2]
    return torch.bernoulli(p1.expand(samples, -1), generator=generator)


def _mixture_check(h: Tensor, y: Tensor) -> None:
    if h.shape[1] != 3:
        raise ValueError(f"the binary mixture loss (eq. 27) needs 3 model outputs; got {h.shape[1]}")
    if y.dim() != 1 or not torch.is_floating_point(y):
        raise ValueError(f"the binary mixture loss needs float targets of shape (N,) in {{0, 1}}; got {tuple(y.shape)} {y.dtype}")
    if y.numel() and ((y != 0) & (y != 1)).any():
        raise ValueError("the binary mixture loss needs targets in {0, 1}")


class BinaryMixtureLoss(CustomLoss):
    """The mixture of two binary classifiers, eq. (27), as a negative log-likelihood.

    ``p(y|h) = σ(h1) σ(h2)^y σ(−h2)^{1−y} + (1 − σ(h1)) σ(h3)^y σ(−h3)^{1−y}``: three model
    outputs, targets (N,) in {0, 1}. Not an exponential family in ``h``, so its output
    Hessian is indefinite in general and the Fisher (KFAC) differs from the Gauss-Newton.
    """

    def __init__(self) -> None:
        super().__init__(_mixture_nll, _mixture_sample, name="mixture", check=_mixture_check)

    def __repr__(self) -> str:
        return "BinaryMixtureLoss()"


_NAMED = {"mse": MSELoss, "bce": BCEWithLogitsLoss, "ce": CrossEntropyLoss, "mixture": BinaryMixtureLoss}


def get_loss(loss: "str | Loss") -> Loss:
    """A :class:`Loss` from a name (``mse``, ``bce``, ``ce``, ``mixture``) or a Loss object."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in _NAMED:
        return _NAMED[loss]()
    raise ValueError(f"unknown loss {loss!r}; use one of {sorted(_NAMED)} or a gnopt.CustomLoss")


def output_rank_bound(loss: Loss, k: int) -> int:
    """An upper bound on rank(H_L) for K outputs (App. D): K, or K−1 for softmax CE."""
    return k - 1 if isinstance(loss, CrossEntropyLoss) else k


__all__ = [
    "Loss", "MSELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "CustomLoss", "BinaryMixtureLoss",
    "get_loss", "output_rank_bound",
]
