"""First-order baselines with the paper's schedule: halve the learning rate every T updates."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from ..losses import Loss, get_loss
from .info import StepInfo

METHODS = ("sgd", "momentum", "nesterov", "adam")


def make_torch_optimizer(method: str, params, lr: float, weight_decay: float = 0.0,
                         momentum: float = 0.9) -> torch.optim.Optimizer:
    """torch's own optimiser for ``method`` in sgd/momentum/nesterov/adam (section 5.1)."""
    if method == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if method == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if method == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if method == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown first-order method {method!r}; use one of {METHODS}")


class FirstOrder:
    """SGD, momentum, Nesterov or Adam, with the learning rate halved every ``decay_period``
    updates (``None``: constant), behind gnopt's ``step(x, y) -> StepInfo`` interface.

    A step with a non-finite loss or gradient is skipped (parameters untouched, reported).
    ``averaged()`` is a no-op context (first-order methods average implicitly, B.4).
    """

    def __init__(self, model: nn.Module, loss: "str | Loss" = "mse", method: str = "adam", lr: float = 1e-3,
                 decay_period: Optional[int] = None, weight_decay: float = 0.0, momentum: float = 0.9) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0; got {lr}")
        if decay_period is not None and decay_period < 1:
            raise ValueError(f"decay_period must be >= 1 or None; got {decay_period}")
        self.model, self.loss, self.method = model, get_loss(loss), method
        self.lr0, self.decay_period = lr, decay_period
        self.opt = make_torch_optimizer(method, model.parameters(), lr, weight_decay, momentum)
        self.step_count = 0

    def current_lr(self) -> float:
        halvings = 0 if self.decay_period is None else self.step_count // self.decay_period
        return self.lr0 * 0.5 ** halvings

    def step(self, x: Tensor, y: Tensor) -> StepInfo:
        t = self.step_count + 1
        lr = self.current_lr()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        out = self.model(x)
        self.loss.check(out.detach(), y)
        loss = self.loss(out, y)
        self.step_count = t
        if not bool(torch.isfinite(loss)):
            return StepInfo(step=t, loss=float(loss.detach()), rejected=True, reason="non-finite loss")
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        gnorm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
        if not math.isfinite(gnorm):
            self.opt.zero_grad(set_to_none=True)
            return StepInfo(step=t, loss=float(loss.detach()), rejected=True, reason="non-finite gradient")
        self.opt.step()
        return StepInfo(step=t, loss=float(loss.detach()), alpha=lr, grad_norm=gnorm)

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        yield

    def state_dict(self) -> dict:
        return {"class": "FirstOrder", "method": self.method, "step": self.step_count, "optimizer": self.opt.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("class") != "FirstOrder" or sd.get("method") != self.method:
            raise ValueError(f"the state dict is for {sd.get('class')}/{sd.get('method')}, not FirstOrder/{self.method}")
        self.step_count = sd["step"]
        self.opt.load_state_dict(sd["optimizer"])
