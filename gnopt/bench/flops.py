"""Floating-point operation counts of one optimiser update, per phase (analytic).

For an autoencoder with widths ``w_0 … w_L`` (layer λ maps d_in = w_{λ-1} to d_out = w_λ,
with a bias, so d' = d_in + 1) and batch size N. A multiply-add is 2 FLOP; element-wise
work (transfer functions, Hadamard products, norms) is O(N Σ d) and left out. These are the
counts of the arithmetic gnopt performs, so ``FLOP / seconds`` is the rate a phase reaches.

* ``forward_backward``: forward 2N Σ d_out d' plus backward 2N Σ d_out d' (weight
  gradients) + 2N Σ_{λ>1} d_out d_in (input gradients).
* ``factors``: Q = āᵀā/N costs N d'² (a symmetric product: half a GEMM). KFRA (eq. 26):
  per layer below the top, W_{λ+1}ᵀ (G_{λ+1} W_{λ+1}) = 2 d_{λ+1}² d_λ + 2 d_{λ+1} d_λ² and
  (1/N) Σ f' f'ᵀ = N d_λ². KFAC (one sample) back-propagates one N×d column block: the
  backward pass's input-gradient cost plus N d_out² per layer. KFLR back-propagates K
  columns per example (K = the output width): K × the KFAC cost of the G side.
* ``decompose``: factored damping with explicit inverses: Cholesky (n³/3) and its inverse
  (2n³/3) of both damped factors, Σ (d_out³ + d'³); Cholesky only (``explicit_inverse=False``):
  a third of that; eigen damping: ~9n³ per factor (symmetric tridiagonal reduction and
  eigenvectors; LAPACK's usual estimate).
* ``precondition``: A_G⁻¹ V A_Q⁻¹, 2 d_out² d' + 2 d_out d'² per layer (four eigenbasis
  products for eigen damping: twice that).
* ``gvp``: the R-operator forward pass Jδ over the stored activations: δ_λ ā_{λ-1} and
  W_λ R(a_{λ-1}), 2N_s Σ d_out d' + 2N_s Σ_{λ>1} d_out d_in with N_s = ⌈f N⌉ examples.

Element-wise losses (``mse``, ``bce``; ``diagonal_top=True``): KFRA's and KFLR's top factor
G_L = E[H_L] is exactly diagonal. KFRA's first recursion step is then W_Lᵀ (g ⊙ W_L), one
GEMM; with explicit inverses G_L is inverted and applied element-wise (no d_L³ decomposition,
no 2 d_L² d' product in the preconditioner).

Amortised configurations (``factor_period`` k) count factors and decompositions as 1/k per
update; the greedy γ search every T_γ updates (three decompositions, solves and products)
is counted as (T_γ + 2)/T_γ of a decomposition, preconditioning and product.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

from ..curvature.trace import subsample_size

PHASES = ("forward_backward", "factors", "decompose", "precondition", "gvp")


def _layers(widths: Sequence[int]):
    return [(int(b), int(a)) for a, b in zip(widths[:-1], widths[1:])]  # (d_out, d_in)


def update_flops(widths: Sequence[int], batch: int, opts: Dict[str, Any],
                 diagonal_top: bool = False) -> Dict[str, float]:
    """FLOP per update and phase for ``make_optimizer(name, ...)`` options ``opts``.

    ``diagonal_top``: the loss's output Hessian is diagonal (``mse``, ``bce``), see above.

    ``opts``: ``name`` (adam/kfra/kflr/kfac/hf), ``factor_period``, ``step_size_fraction``,
    ``damping``, ``explicit_inverse``, ``T_gamma`` (GaussNewton's defaults when absent).
    Hessian-free and Adam: only ``forward_backward`` is counted.
    """
    layers = _layers(widths)
    N = int(batch)
    fwd = sum(2 * N * o * (i + 1) for o, i in layers)
    bwd = fwd + sum(2 * N * o * i for o, i in layers[1:])
    out: Dict[str, float] = {"forward_backward": float(fwd + bwd)}
    name = opts.get("name", "kfra")
    if name not in ("kfra", "kflr", "kfac"):
        return out
    from ..optim import GaussNewton
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(GaussNewton).parameters.items()}
    get = lambda k: opts.get(k, defaults.get(k))  # noqa: E731
    period = int(get("factor_period"))
    frac = float(get("step_size_fraction"))
    T_gamma = int(get("T_gamma"))
    eigen = get("damping") == "eigen"
    explicit = bool(get("explicit_inverse"))

    diag = diagonal_top and name in ("kfra", "kflr")
    top = len(layers) - 2  # the recursion step through the last layer's weights
    q = sum(N * (i + 1) ** 2 for o, i in layers)
    if name == "kfra":
        g = sum((0 if diag and j == top else 2 * layers[j + 1][0] ** 2 * o) + 2 * layers[j + 1][0] * o ** 2
                + N * o ** 2 for j, (o, i) in enumerate(layers[:-1]))
    else:
        cols = 1 if name == "kfac" else int(widths[-1])
        g = cols * (sum(2 * N * o * i for o, i in layers[1:]) + sum(N * o ** 2 for o, i in layers))
    out["factors"] = (q + g) / period
    search = (T_gamma + 2) / T_gamma
    skip = diag and explicit and not eigen  # G_L inverted and applied element-wise
    cube = sum(o ** 3 + (i + 1) ** 3 for o, i in layers) - (layers[-1][0] ** 3 if skip else 0)
    dec = 9 * cube if eigen else (cube if explicit else cube / 3)
    # eigen decompositions do not depend on γ: refreshed with the factors only
    out["decompose"] = dec / period * (1.0 if eigen else search)
    pre = sum(2 * o * o * (i + 1) + 2 * o * (i + 1) ** 2 for o, i in layers)
    if skip:
        pre -= 2 * layers[-1][0] ** 2 * (layers[-1][1] + 1)
    out["precondition"] = (2 * pre if eigen else pre) * search
    ns = subsample_size(N, frac)  # the examples GaussNewton uses for the α product
    out["gvp"] = (sum(2 * ns * o * (i + 1) for o, i in layers) + sum(2 * ns * o * i for o, i in layers[1:])) * search
    return out
