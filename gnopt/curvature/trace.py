"""The forward pass of eq. (1), keeping what the backward recursions need.

No hooks: the parsed stages are evaluated module by module (exactly what
``nn.Sequential.forward`` does), so nothing is ever installed on the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor

from ..layers import Network


@dataclass(frozen=True)
class Trace:
    """Per-stage layer inputs and pre-activations of one forward pass.

    ``inputs[λ]``: a_{λ-1}, (N, d_in); ``preacts[λ]``: h_λ, (N, d_out), or ``None`` where
    the trace was recorded without it (f' then comes from the stage output, see
    :func:`forward_trace`); ``output``: the model output (N, K) (the last stage's
    activations applied to its pre-activation).
    """

    inputs: List[Tensor]
    preacts: List[Optional[Tensor]]
    output: Tensor

    def activation(self, index: int) -> Tensor:
        """a_λ = f(h_λ), the output of stage ``index`` (the next stage's input, or the output)."""
        return self.inputs[index + 1] if index + 1 < len(self.inputs) else self.output

    def copied(self) -> "Trace":
        """A copy that owns its memory (of a view of the first rows, say: the rest can be freed)."""
        return Trace([a.clone() for a in self.inputs], [_map(h, Tensor.clone) for h in self.preacts],
                     self.output.clone())

    def detached(self) -> "Trace":
        return Trace([a.detach() for a in self.inputs], [_map(h, Tensor.detach) for h in self.preacts],
                     self.output.detach())


def _map(h: Optional[Tensor], fn) -> Optional[Tensor]:
    return None if h is None else fn(h)


def check_input(net: Network, x: Tensor) -> None:
    """Raise ``ValueError`` if ``x`` is not a finite (N, d_in) floating-point batch."""
    if not isinstance(x, Tensor):
        raise ValueError(f"the input must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"the input must have shape (N, {net.in_features}); got {tuple(x.shape)}")
    if x.shape[1] != net.in_features:
        raise ValueError(f"the model's first nn.Linear expects {net.in_features} features; the input has shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("the input batch is empty")
    if not torch.is_floating_point(x):
        raise ValueError(f"the input must be floating point; got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("the input contains NaN or infinite values")


def forward_trace(net: Network, x: Tensor, keep_preacts: bool = True) -> Trace:
    """Run the network on ``x`` (N, D), recording a_{λ-1} and h_λ for every stage.

    Gradients flow if autograd is enabled, so the same trace serves the gradient and
    (detached) the curvature. ``keep_preacts=False``: h_λ is not kept (``None``) where f'
    follows from the stage output (:attr:`~gnopt.layers.Stage.d1_from_output`: sigmoid,
    tanh, ReLU), enough for every Gauss-Newton quantity (factors, GN-vector products) but
    not for the Hessian's f''; autograd does not keep these h_λ either (the backward of
    sigmoid/tanh/ReLU reads the output), so they are freed at once — (N, Σ d_out) floats
    less during the backward pass and for as long as the trace is held.
    """
    a = x
    for m in net.pre:
        a = m(a)
    inputs: List[Tensor] = []
    preacts: List[Optional[Tensor]] = []
    for st in net.stages:
        inputs.append(a)
        h = st.linear(a)
        a = st.activate(h)
        preacts.append(h if keep_preacts or not st.d1_from_output or a is h else None)
    return Trace(inputs, preacts, a)


def forward_output(net: Network, x: Tensor) -> Tensor:
    """The model output (N, K) for ``x`` (N, D): the same operations as :func:`forward_trace`,
    keeping nothing else (peak memory: under ``torch.no_grad`` each stage's tensors are freed
    as soon as the next one is computed)."""
    a = x
    for m in net.pre:
        a = m(a)
    for st in net.stages:
        a = st.activate(st.linear(a))
    return a


def subsample_size(n: int, fraction: float) -> int:
    """⌈fraction·n⌉ clamped to [1, n] (rounded to 1e-6 first, so that 0.25·1000 is 250)."""
    return max(1, min(n, -(-int(round(fraction * n * 1e6)) // 1000000)))


def first_rows(trace: Trace, y: Tensor, m: int) -> "tuple[Trace, Tensor]":
    """The trace and targets of the first ``m`` examples (views, no copies)."""
    if m == trace.output.shape[0]:
        return trace, y
    return Trace([a[:m] for a in trace.inputs], [None if h is None else h[:m] for h in trace.preacts],
                 trace.output[:m]), y[:m]


def subsample(trace: Trace, y: Tensor, fraction: float) -> "tuple[Trace, Tensor]":
    """The trace and targets of the first ⌈fraction·N⌉ examples (views, no copies)."""
    return first_rows(trace, y, subsample_size(trace.output.shape[0], fraction))


def augmented(a: Tensor, bias: bool) -> Tensor:
    """ā = [a, 1] (N, d_in+1) when the layer has a bias (paper footnote 1), else ``a``."""
    if not bias:
        return a
    return torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)], dim=1)


def symmetric_product(x: Tensor, y: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """xᵀy (d, d) for x, y (M, d) whose product is known to be symmetric (e.g. x = W, y = GW
    with G symmetric, or y = x), computing only the blocks on and above the diagonal.

    With x = [x₁ x₂], y = [y₁ y₂] split in halves, x₁ᵀy₁ and x₂ᵀy₂ (recursively) and x₁ᵀy₂
    are multiplied, and x₂ᵀy₁ = (x₁ᵀy₂)ᵀ is mirrored: about 5/8 of a GEMM's work at d ≥ 512.
    The result is exactly symmetric (blocks below d = 256 are averaged with their transpose).
    ``out``: a (d, d) matrix or view (unit column stride) to write into, e.g. a block of a
    larger matrix; the blocks are multiplied into it directly (no temporaries to copy).
    """
    d = x.shape[1]
    if out is None:
        out = torch.empty(d, d, dtype=x.dtype, device=x.device)
    if d < 256:
        g = x.T @ y
        return torch.add(g, g.T, out=out).mul_(0.5)
    k = d // 2
    symmetric_product(x[:, :k], y[:, :k], out[:k, :k])
    symmetric_product(x[:, k:], y[:, k:], out[k:, k:])
    torch.mm(x[:, :k].T, y[:, k:], out=out[:k, k:])
    out[k:, :k] = out[:k, k:].T
    return out


def gram(a: Tensor) -> Tensor:
    """aᵀa (d, d) for a (N, d), exactly symmetric, by :func:`symmetric_product`."""
    return symmetric_product(a, a)


def activation_factor(a: Tensor, bias: bool) -> Tensor:
    """Q = (1/N) Σ ā āᵀ, eq. (21): (d_in(+1), d_in(+1)).

    With a bias, Q = [[AᵀA, Aᵀ1], [1ᵀA, N]] / N is assembled blockwise (no copy of A).
    """
    n = a.shape[0]
    if not bias:
        return gram(a).div_(n)
    d = a.shape[1]
    Q = torch.empty(d + 1, d + 1, dtype=a.dtype, device=a.device)
    symmetric_product(a, a, Q[:d, :d])  # aᵀa written in place
    s = a.sum(0)
    Q[:d, d] = s
    Q[d, :d] = s
    Q[d, d] = n
    return Q.div_(n)
