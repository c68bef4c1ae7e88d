"""The explicit registry of supported layers, and the parse of a model into stages.

A supported model is an ``nn.Sequential`` (nested Sequentials are flattened) of
``nn.Linear`` modules and elementwise transfer functions, eq. (1) of the paper::

    h_λ = W_λ a_{λ-1} (+ b_λ),    a_λ = f_λ(h_λ).

A *stage* is one ``nn.Linear`` followed by the (possibly empty, possibly several)
elementwise transfer functions before the next ``nn.Linear``. Several transfer functions in
a row are composed, with f' and f'' of the composition by the chain rule. Transfer functions
in front of the first ``nn.Linear`` have no parameters and are treated as a fixed transform
of the input. Anything else (Conv2d, Dropout, BatchNorm, custom modules) raises a
``ValueError`` that names the module and lists what is supported; there is no silent
fallback.

Every transfer function in the registry knows its first and second derivative as pure
functions of the pre-activation ``h``; these are the diagonals of ``B_λ`` (eq. 9) and the
``f''`` in ``D_λ`` (eq. 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor, nn

Deriv = Callable[[nn.Module, Tensor], Tensor]


@dataclass(frozen=True)
class Activation:
    """Derivatives of an elementwise transfer function ``f`` as functions of ``h``.

    ``d1(module, h)`` is ``f'(h)`` and ``d2(module, h)`` is ``f''(h)``, both of the shape of
    ``h``. ``piecewise_linear`` marks ``f'' = 0`` almost everywhere (section 2.2.3).
    ``d1_out(module, a)``, if given, is ``f'`` computed from the output ``a = f(h)``
    (σ' = a(1−a), tanh' = 1−a²), which saves re-evaluating ``f`` in the backward recursions.
    """

    d1: Deriv
    d2: Deriv
    piecewise_linear: bool = False
    d1_out: Optional[Deriv] = None  # f' from the output a = f(h), when cheaper (no exp)


def _sigmoid_d1(m: nn.Module, h: Tensor) -> Tensor:
    s = torch.sigmoid(h)
    return s * (1 - s)


def _sigmoid_d2(m: nn.Module, h: Tensor) -> Tensor:
    s = torch.sigmoid(h)
    return s * (1 - s) * (1 - 2 * s)


def _tanh_d1(m: nn.Module, h: Tensor) -> Tensor:
    return 1 - torch.tanh(h) ** 2


def _tanh_d2(m: nn.Module, h: Tensor) -> Tensor:
    t = torch.tanh(h)
    return -2 * t * (1 - t * t)


def _relu_d1(m: nn.Module, h: Tensor) -> Tensor:
    return (h > 0).to(h.dtype)


def _leaky_d1(m: nn.Module, h: Tensor) -> Tensor:
    slope = float(m.negative_slope)  # type: ignore[attr-defined]
    return torch.where(h > 0, torch.ones_like(h), torch.full_like(h, slope))


def _zero(m: nn.Module, h: Tensor) -> Tensor:
    return torch.zeros_like(h)


def _one(m: nn.Module, h: Tensor) -> Tensor:
    return torch.ones_like(h)


def _softplus_d1(m: nn.Module, h: Tensor) -> Tensor:
    beta = float(m.beta)  # type: ignore[attr-defined]
    threshold = float(m.threshold)  # type: ignore[attr-defined]
    d = torch.sigmoid(beta * h)
    return torch.where(beta * h > threshold, torch.ones_like(h), d)


def _softplus_d2(m: nn.Module, h: Tensor) -> Tensor:
    beta = float(m.beta)  # type: ignore[attr-defined]
    threshold = float(m.threshold)  # type: ignore[attr-defined]
    s = torch.sigmoid(beta * h)
    return torch.where(beta * h > threshold, torch.zeros_like(h), beta * s * (1 - s))


def _elu_d1(m: nn.Module, h: Tensor) -> Tensor:
    alpha = float(m.alpha)  # type: ignore[attr-defined]
    return torch.where(h > 0, torch.ones_like(h), alpha * torch.exp(torch.clamp(h, max=0)))


def _elu_d2(m: nn.Module, h: Tensor) -> Tensor:
    alpha = float(m.alpha)  # type: ignore[attr-defined]
    return torch.where(h > 0, torch.zeros_like(h), alpha * torch.exp(torch.clamp(h, max=0)))


ACTIVATIONS: Dict[Type[nn.Module], Activation] = {
    nn.Identity: Activation(_one, _zero, piecewise_linear=True),
    nn.ReLU: Activation(_relu_d1, _zero, piecewise_linear=True, d1_out=_relu_d1),
    nn.LeakyReLU: Activation(_leaky_d1, _zero, piecewise_linear=True),
    nn.Sigmoid: Activation(_sigmoid_d1, _sigmoid_d2, d1_out=lambda m, a: a * (1 - a)),
    nn.Tanh: Activation(_tanh_d1, _tanh_d2, d1_out=lambda m, a: 1 - a * a),
    nn.Softplus: Activation(_softplus_d1, _softplus_d2),
    nn.ELU: Activation(_elu_d1, _elu_d2),
}
"""The registry: module type → derivatives. Exact type match (a subclass may change ``forward``)."""


def supported_modules() -> str:
    """A human-readable list of the supported module types, for error messages."""
    names = ["Linear"] + [t.__name__ for t in ACTIVATIONS]
    return ", ".join(names)


@dataclass(frozen=True)
class Stage:
    """One ``nn.Linear`` and the transfer functions applied after it (eq. 1).

    ``index`` is the position of the stage among the model's linear layers (0-based,
    forward order); ``activations`` the transfer-function modules in forward order.
    """

    index: int
    linear: nn.Linear
    activations: Tuple[nn.Module, ...]

    @property
    def d_in(self) -> int:
        return self.linear.in_features

    @property
    def d_out(self) -> int:
        return self.linear.out_features

    @property
    def has_bias(self) -> bool:
        return self.linear.bias is not None

    @property
    def is_identity(self) -> bool:
        """No transfer function (or only ``nn.Identity``): f' = 1, f'' = 0."""
        return all(type(m) is nn.Identity for m in self.activations)

    @property
    def piecewise_linear(self) -> bool:
        return all(ACTIVATIONS[type(m)].piecewise_linear for m in self.activations)

    @property
    def d1_from_output(self) -> bool:
        """f' is computable from the stage output a = f(h) alone (one transfer function with a
        ``d1_out`` rule, e.g. sigmoid, tanh, ReLU): a trace need not keep h for first-order
        curvature (:func:`gnopt.curvature.trace.forward_trace`)."""
        return len(self.activations) == 1 and ACTIVATIONS[type(self.activations[0])].d1_out is not None

    def activate(self, h: Tensor) -> Tensor:
        """``a = f(h)``: apply the stage's transfer functions. Shape preserved."""
        for m in self.activations:
            h = m(h)
        return h

    def derivatives(self, h: Optional[Tensor], second: bool = False,
                    a: Optional[Tensor] = None) -> Tuple[Tensor, Tensor | None]:
        """``(f'(h), f''(h))`` of the composed transfer function, each shaped like ``h``.

        For a composition ``g∘f``: ``(g∘f)' = g'(f) f'`` and
        ``(g∘f)'' = g''(f) f'^2 + g'(f) f''``. ``f''`` is only computed if ``second``.
        ``a``, the stage output f(h), if given lets a single transfer function with a
        ``d1_out`` rule skip re-evaluating f; then ``h`` may be ``None`` (a trace that did
        not keep it, see :attr:`d1_from_output`).
        """
        if not second and a is not None and self.d1_from_output:
            m = self.activations[0]
            return ACTIVATIONS[type(m)].d1_out(m, a), None  # type: ignore[misc]
        if h is None:
            raise ValueError(f"stage {self.index}: f' (second={second}) needs the pre-activation h, "
                             "which this trace did not keep")
        d1 = torch.ones_like(h)
        d2 = torch.zeros_like(h) if second else None
        z = h
        for m in self.activations:
            act = ACTIVATIONS[type(m)]
            g1 = act.d1(m, z)
            if second:
                g2 = act.d2(m, z)
                d2 = g2 * d1 * d1 + g1 * d2
            d1 = g1 * d1
            z = m(z)
        return d1, d2


@dataclass(frozen=True)
class Network:
    """A parsed feed-forward net: input transforms, then the stages, in forward order."""

    pre: Tuple[nn.Module, ...]
    stages: Tuple[Stage, ...]

    @property
    def out_features(self) -> int:
        return self.stages[-1].d_out

    @property
    def in_features(self) -> int:
        return self.stages[0].d_in


def _flatten(modules: Sequence[nn.Module]) -> List[nn.Module]:
    out: List[nn.Module] = []
    for m in modules:
        if type(m) is nn.Sequential:
            out.extend(_flatten(list(m)))
        else:
            out.append(m)
    return out


def parse_model(model: nn.Module) -> Network:
    """Parse ``model`` into stages, or raise ``ValueError`` naming what is not supported.

    Raises:
        ValueError: ``model`` is not an ``nn.Sequential``, contains a module outside the
            registry (the message names it and lists the supported ones), or contains no
            ``nn.Linear``.
    """
    if type(model) is not nn.Sequential:
        raise ValueError(
            f"gnopt supports models given as nn.Sequential of {supported_modules()}; "
            f"got a {type(model).__name__}. Wrap the layers in nn.Sequential "
            "(a DistributedDataParallel model: pass model.module)."
        )
    pre: List[nn.Module] = []
    stages: List[Stage] = []
    current: nn.Linear | None = None
    acts: List[nn.Module] = []
    for pos, m in enumerate(_flatten(list(model))):
        if type(m) is nn.Linear:
            if current is not None:
                stages.append(Stage(len(stages), current, tuple(acts)))
            current, acts = m, []
        elif type(m) in ACTIVATIONS:
            if getattr(m, "inplace", False):
                # In-place transfer functions would overwrite the stored pre-activations.
                raise ValueError(
                    f"module {pos} ({m!r}) is in-place; gnopt needs the pre-activations, "
                    f"use {type(m).__name__}(inplace=False)"
                )
            (acts if current is not None else pre).append(m)
        else:
            raise ValueError(
                f"unsupported module at position {pos}: {type(m).__name__} ({m!r}). "
                f"gnopt's curvature supports nn.Sequential of: {supported_modules()}."
            )
    if current is None:
        raise ValueError("the model contains no nn.Linear layer; nothing to optimise")
    stages.append(Stage(len(stages), current, tuple(acts)))
    return Network(tuple(pre), tuple(stages))
