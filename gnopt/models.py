"""The networks of Botev, Ritter & Barber (2017), section 5, as ``nn.Sequential``.

* :func:`autoencoder` — ``D-1000-500-250-30-250-500-1000-D`` (MNIST, CURVES: binary
  cross-entropy on logits; FACES: squared error). The output layer is always linear: the
  loss (``bce`` on logits, or ``mse``) supplies the output non-linearity.
* :func:`mixture_classifier` — the odd/even classifier of section 5.2:
  ``D-1000-500-250-30`` followed by a linear layer to the 3 outputs that the binary
  mixture likelihood (eq. 27) needs.
* :func:`model_for_dataset` — the right one of the two for a data set name.

Choices (the paper states none of them; see docs/REPRODUCTION.md, section 3):

* **Transfer function: logistic sigmoid** on every hidden layer. The paper says its
  autoencoders are "inspired by (Hinton & Salakhutdinov, 2006)", whose nets — and the
  HF/K-FAC code whose published training errors we compare with — use logistic units. The
  authors' later Lasagne code uses tanh; pass ``activation="tanh"`` for that.
* **Code layer linear** (autoencoders): as in Hinton & Salakhutdinov and the HF/K-FAC code.
  ``code_linear=False`` puts the transfer function on the code layer too (as the Lasagne
  code does). For the classifier the 30-unit layer is an ordinary hidden layer (followed by
  the linear output layer, a linear code layer would only factorise a linear map), so its
  ``code_linear`` defaults to ``False``.
* **Initialisation: "sparse"** (Martens, 2010): each unit gets exactly 15 non-zero incoming
  weights drawn from N(0, 1) (all of them if the fan-in is below 15); biases 0. For tanh
  layers Martens' code halves those weights and sets the biases to 0.5; we do the same.
  Alternatives: ``"glorot"`` (Glorot/Xavier uniform, biases 0; what the authors' Lasagne
  code uses) and ``"default"`` (PyTorch's ``nn.Linear`` initialisation).
* **Widths** default to the paper's; pass ``widths=(16, 8, 4)`` etc. for tiny test nets
  (the encoder widths; the decoder mirrors them).

Weight decay (η = 1e-5 in the HF/K-FAC code) belongs to the optimiser, not the model.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

__all__ = [
    "PAPER_WIDTHS", "ACTIVATION_NAMES", "INIT_NAMES", "autoencoder", "mixture_classifier",
    "model_for_dataset", "make_activation", "init_linear_", "parse_widths", "linear_layers",
]

PAPER_WIDTHS = (1000, 500, 250, 30)
"""Encoder widths of all the paper's nets (section 5)."""

SPARSE_FAN_IN = 15
"""Non-zero incoming weights per unit in Martens' sparse initialisation."""

_ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),  # max(0.1x, x), suggested in section 2.2.3
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "linear": nn.Identity,
}
ACTIVATION_NAMES = tuple(_ACTIVATIONS)
INIT_NAMES = ("sparse", "glorot", "default")


def make_activation(name: str) -> nn.Module:
    """A transfer-function module by name (one of :data:`ACTIVATION_NAMES`)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {ACTIVATION_NAMES}") from None


def parse_widths(text: "str | Sequence[int] | None") -> Optional[tuple]:
    """``"16,8,4"`` → ``(16, 8, 4)``; sequences pass through; ``None`` stays ``None``."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = [p for p in text.replace(" ", "").split(",") if p]
        try:
            out = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"widths must be comma-separated integers, got {text!r}") from None
    else:
        out = tuple(int(w) for w in text)
    if not out or any(w < 1 for w in out):
        raise ValueError(f"widths must be one or more positive integers, got {text!r}")
    return out


def init_linear_(layer: nn.Linear, init: str, activation: str = "sigmoid",
                 generator: Optional[torch.Generator] = None) -> nn.Linear:
    """Initialise ``layer`` in place by the named scheme (see the module docstring).

    ``activation`` is the transfer function that follows the layer (matters for "sparse":
    tanh layers get weights × 0.5 and biases 0.5, as in Martens' code).
    """
    W = layer.weight
    with torch.no_grad():
        if init == "sparse":
            d_out, d_in = W.shape
            k = min(SPARSE_FAN_IN, d_in)
            W.zero_()
            # Choose k distinct incoming connections per unit: the first k of a random permutation.
            keys = torch.rand(d_out, d_in, generator=generator, dtype=torch.float64)
            idx = keys.argsort(dim=1)[:, :k]
            vals = torch.randn(d_out, k, generator=generator, dtype=torch.float64).to(W.dtype)
            if activation == "tanh":
                vals = vals * 0.5
            W.scatter_(1, idx, vals)
            if layer.bias is not None:
                layer.bias.fill_(0.5 if activation == "tanh" else 0.0)
        elif init == "glorot":
            d_out, d_in = W.shape
            bound = math.sqrt(6.0 / (d_in + d_out))
            W.copy_((torch.rand(W.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
            if layer.bias is not None:
                layer.bias.zero_()
        elif init == "default":
            # nn.Linear's own scheme (kaiming_uniform(a=√5) ≡ U(±1/√fan_in)), from our generator.
            bound = 1.0 / math.sqrt(W.shape[1])
            W.copy_((torch.rand(W.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
            if layer.bias is not None:
                layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
        else:
            raise ValueError(f"unknown init {init!r}; choose from {INIT_NAMES}")
    return layer


def _build(sizes: Sequence[int], acts: Sequence[str], init: str, seed: int, dtype: torch.dtype) -> nn.Sequential:
    """Linear layers ``sizes[i] → sizes[i+1]``, each followed by ``acts[i]`` (``"linear"``: none)."""
    if len(acts) != len(sizes) - 1:
        raise AssertionError("one activation per linear layer")
    gen = torch.Generator().manual_seed(int(seed))
    mods = []
    for d_in, d_out, act in zip(sizes[:-1], sizes[1:], acts):
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
            layer = nn.Linear(d_in, d_out, dtype=dtype)
        init_linear_(layer, init, act, gen)
        mods.append(layer)
        if act != "linear":
            mods.append(make_activation(act))
    return nn.Sequential(*mods)


def _check(activation: str, init: str) -> None:
    make_activation(activation)
    if init not in INIT_NAMES:
        raise ValueError(f"unknown init {init!r}; choose from {INIT_NAMES}")


def autoencoder(input_dim: int, widths: Optional[Sequence[int]] = None, activation: str = "sigmoid",
                code_linear: bool = True, init: str = "sparse", seed: int = 0,
                dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The deep autoencoder ``D-w1-…-wk-…-w1-D`` (default ``D-1000-500-250-30-250-500-1000-D``).

    Args:
        input_dim: D, the input (and output) dimension.
        widths: encoder widths ``(w1, …, wk)``; ``wk`` is the code layer. Default the paper's.
        activation: transfer function of the hidden layers (:data:`ACTIVATION_NAMES`).
        code_linear: leave the code layer linear (default, as Hinton & Salakhutdinov).
        init: "sparse" (default), "glorot" or "default".
        seed: seed of the initialisation (a private ``torch.Generator``; global RNG untouched).

    Returns an ``nn.Sequential`` of ``nn.Linear`` and transfer functions whose last module is
    the linear output layer (logits for ``bce``, the reconstruction for ``mse``).
    """
    _check(activation, init)
    widths = tuple(PAPER_WIDTHS if widths is None else parse_widths(widths))
    sizes = (int(input_dim),) + widths + widths[-2::-1] + (int(input_dim),)
    k = len(widths)
    acts = [activation] * (len(sizes) - 1)
    if code_linear:
        acts[k - 1] = "linear"
    acts[-1] = "linear"
    return _build(sizes, acts, init, seed, dtype)


def mixture_classifier(input_dim: int, widths: Optional[Sequence[int]] = None, activation: str = "sigmoid",
                       code_linear: bool = False, init: str = "sparse", seed: int = 0, outputs: int = 3,
                       dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The odd/even classifier of section 5.2: ``D-1000-500-250-30-3`` (linear output).

    The 3 outputs are ``(h1, h2, h3)`` of the binary mixture likelihood (eq. 27): the gate
    logit and the logits of the two component classifiers. Arguments as :func:`autoencoder`;
    ``code_linear`` (default ``False``) leaves the last hidden layer linear.
    """
    _check(activation, init)
    widths = tuple(PAPER_WIDTHS if widths is None else parse_widths(widths))
    sizes = (int(input_dim),) + widths + (int(outputs),)
    acts = [activation] * (len(sizes) - 1)
    if code_linear:
        acts[len(widths) - 1] = "linear"
    acts[-1] = "linear"
    return _build(sizes, acts, init, seed, dtype)


def model_for_dataset(dataset: str, input_dim: int, **opts) -> nn.Sequential:
    """The paper's net for a data set: the mixture classifier for "mnist_oddeven", else the
    autoencoder. ``opts`` go to :func:`autoencoder` / :func:`mixture_classifier`; an
    explicit ``code_linear=None`` means "the default of that net"."""
    opts = {k: v for k, v in opts.items() if v is not None}
    if dataset == "mnist_oddeven":
        return mixture_classifier(input_dim, **opts)
    return autoencoder(input_dim, **opts)


def linear_layers(model: nn.Module) -> list:
    """The ``nn.Linear`` modules of ``model`` in forward order."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]
