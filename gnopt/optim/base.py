"""Shared machinery of gnopt's optimisers: parsing, checks, averaging, rejection, state."""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..curvature.trace import Trace, forward_output, forward_trace
from ..distributed.comm import Communicator, Shard, resolve_communicator, sync_batch
from ..layers import parse_model
from ..losses import Loss, get_loss
from ..numerics import all_finite, all_finite_made, dot, norm
from ..params import layer_matrix, split_matrix, stage_params
from .damping import polyak_beta
from .info import StepInfo
from .timing import PhaseTimer


def _finite(ts: Sequence[Tensor]) -> bool:
    return all_finite(ts)


def _norm(ts: Sequence[Tensor]) -> float:
    return norm(ts)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return dot(a, b)


class CurvatureOptimizer:
    """Base of :class:`GaussNewton` and :class:`HessianFree`.

    Holds the parsed network, the loss, weight decay η, Polyak averages (B.4) and the step
    counter; provides the checked forward/backward pass of a step and the machinery for
    rejecting a step without touching the parameters.

    ``distributed`` (see :mod:`gnopt.distributed`): ``"auto"`` (default) trains data-parallel
    when ``torch.distributed`` is initialised with more than one rank, ``False`` never, or an
    explicit :class:`~gnopt.distributed.Communicator`. When distributed, rank 0's parameters
    are broadcast at construction, and a ``DistributedDataParallel`` model is unwrapped
    (gnopt does its own reductions; DDP's hooks never run, since gnopt never calls its forward).
    """

    def __init__(self, model: nn.Module, loss: "str | Loss", weight_decay: float = 0.0,
                 polyak: bool = True, polyak_max: float = 0.95, *,
                 distributed: "str | bool | Communicator" = "auto") -> None:
        self.model = model
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        self.net = parse_model(model)
        self.comm = resolve_communicator(distributed)
        if self.comm.distributed:
            with torch.no_grad():
                ps = self.params()
                flat = self.comm.broadcast(torch.cat([p.detach().reshape(-1) for p in ps]), src=0)
                for p, v in zip(ps, flat.split([p.numel() for p in ps])):
                    p.copy_(v.view_as(p))
        self.loss = get_loss(loss)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
        self.weight_decay = float(weight_decay)
        self.polyak, self.polyak_max = polyak, polyak_max
        self.step_count = 0
        self.accepted = 0
        self.rejected_count = 0
        self.avg: Optional[List[Tensor]] = None
        self._timer = PhaseTimer(False)

    # -- parameters ------------------------------------------------------------------------
    def layer_params(self) -> List[Tensor]:
        """Current per-layer V = [W | b] (detached copies)."""
        # with a bias, layer_matrix concatenates: already a new tensor, no second copy
        return [layer_matrix(st).detach() if st.has_bias else st.linear.weight.detach().clone()
                for st in self.net.stages]

    def param_norm(self) -> float:
        """‖θ‖ (all layers' W and b), without copying the parameters."""
        return _norm([p.detach() for p in self.params()])

    def params(self) -> List[nn.Parameter]:
        return [p for st in self.net.stages for p in stage_params(st)]

    @torch.no_grad()
    def set_layer_params(self, mats: Sequence[Tensor]) -> None:
        for p, t in self.param_pairs(mats):
            p.copy_(t)

    def param_pairs(self, mats: Sequence[Tensor]) -> List[Tuple[nn.Parameter, Tensor]]:
        """(parameter, its part of ``mats``) for every W and b, ``mats`` per-layer ``[W | b]``
        matrices (views, no copies)."""
        return [(p, t) for st, V in zip(self.net.stages, mats) for p, t in zip(stage_params(st), split_matrix(st, V))]

    @torch.no_grad()
    def add_to_params(self, deltas: Sequence[Tensor], scale: float) -> None:
        for p, t in self.param_pairs(deltas):
            p.add_(t, alpha=scale)

    @torch.no_grad()
    def try_add_to_params(self, deltas: Sequence[Tensor], scale: float) -> bool:
        """θ ← θ + scale·δ if every new value is finite, else ``False`` and θ untouched.

        The sums are formed one parameter at a time before anything is written (no copy of
        θ is kept for a roll-back) and checked through their element sums with one host
        synchronisation (exactly, element-wise, only if that is not finite), then added in
        place by the same kernel.
        """
        pairs = self.param_pairs(deltas)
        if not all_finite_made(lambda: (torch.add(p, t, alpha=scale) for p, t in pairs)):
            return False
        self.add_to_params(deltas, scale)
        return True

    # -- the batch -------------------------------------------------------------------------
    def check_batch(self, x: Tensor, y: Tensor) -> None:
        """Shape and type errors raise ``ValueError``; non-finite values lead to rejection."""
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ValueError("x and y must be torch.Tensors")
        if x.dim() != 2 or x.shape[1] != self.net.in_features:
            raise ValueError(f"the input must have shape (N, {self.net.in_features}); got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"the input must be floating point; got dtype {x.dtype}")
        if y.shape[:1] != x.shape[:1]:
            raise ValueError(f"{y.shape[0] if y.dim() else 'scalar'} targets for a batch of {x.shape[0]} inputs")

    def forward_backward(self, x: Tensor, y: Tensor) -> Tuple[Optional[Trace], Tensor, Optional[List[Tensor]]]:
        """Forward with autograd, batch-mean loss, per-layer gradients (+ η V, weight decay).

        Returns (detached trace, loss, grads) or (None, loss, None) if the loss is not finite.
        Distributed: the global loss and gradients (see :meth:`forward_backward_shard`).
        """
        trace, loss, grads, _ = self.forward_backward_shard(x, y)
        return trace, loss, grads

    def _reject(self, t: int, loss: float, reason: str) -> StepInfo:
        raise NotImplementedError

    def begin_step(self, x: Tensor, y: Tensor):
        """Count the step, run :meth:`forward_backward_shard` and reject a non-finite loss or
        gradient. Returns ``(t, trace, loss, grads, shard)``, or the rejection's StepInfo."""
        t = self.step_count + 1
        self.step_count = t
        with self._timer.phase("forward_backward"):
            trace, loss_t, grads, shard = self.forward_backward_shard(x, y)
            loss = float(loss_t)
        if trace is None or grads is None:
            return self._reject(t, loss, "non-finite loss")
        if not _finite(grads):
            return self._reject(t, loss, "non-finite gradient")
        return t, trace, loss, grads, shard

    def forward_backward_shard(self, x: Tensor, y: Tensor
                               ) -> Tuple[Optional[Trace], Tensor, Optional[List[Tensor]], Optional[Shard]]:
        """:meth:`forward_backward` and this step's :class:`~gnopt.distributed.Shard`.

        One process: the shard is ``None``. Distributed: (x, y) is this rank's shard; the
        loss and the gradients returned are the global means over all ranks' examples
        (weighted by shard size), and the loss is NaN on every rank (so that all reject
        the step) if it is not finite on any rank. The trace stays local.
        """
        self.check_batch(x, y)
        shard: Optional[Shard] = None
        with torch.enable_grad():
            trace = forward_trace(self.net, x, keep_preacts=False)  # f' from the outputs (GN only)
            self.loss.check(trace.output.detach(), y)
            loss = self.loss(trace.output, y)
            if self.comm.distributed:
                if x.shape[0] == 0:
                    raise ValueError("every rank needs at least one example in its shard")
                shard, glob, bad = sync_batch(self.comm, x.shape[0], loss.detach())
                if bad:
                    return None, glob, None, shard
            elif not bool(torch.isfinite(loss)):
                return None, loss.detach(), None, None
            params = self.params()
            gs = torch.autograd.grad(loss, params)
        if shard is not None:
            gs = tuple(shard.mean_many(gs))
            loss = glob
        grads, i = [], 0
        gs = list(gs)
        for st in self.net.stages:
            n = 2 if st.has_bias else 1
            parts = gs[i:i + n]
            gs[i:i + n] = [None] * n  # peak memory: each autograd gradient goes once copied into [W | b]
            i += n
            g = layer_matrix(st, *parts) if st.has_bias else parts[0]
            if self.weight_decay:
                g = g + self.weight_decay * layer_matrix(st).detach()
            grads.append(g.detach())
        return trace.detached(), loss.detach(), grads, shard

    @torch.no_grad()
    def objective(self, x: Tensor, y: Tensor, *, reduce=None) -> float:
        """f(θ) = loss + (η/2)‖θ‖² on the batch (the function of eq. 32, 42).

        ``reduce`` (a :class:`~gnopt.distributed.Shard`): the loss is the global mean.
        """
        out = forward_output(self.net, x)
        lo = self.loss(out, y)
        f = float(lo if reduce is None else reduce(lo))
        if self.weight_decay:
            f += 0.5 * self.weight_decay * _norm(self.layer_params()) ** 2
        return f

    # -- averaging (B.4) -------------------------------------------------------------------
    @torch.no_grad()
    def update_average(self, cur: Optional[List[Tensor]] = None) -> None:
        """Fold the current per-layer parameters ``cur`` (read from the model if None) into θ̂."""
        if not self.polyak:
            return
        cur = self.layer_params() if cur is None else cur
        if self.avg is None:
            self.avg = cur
            return
        beta = polyak_beta(self.accepted, self.polyak_max)
        for a, c in zip(self.avg, cur):  # in place: θ̂ is ours alone (cloned in and out of state dicts)
            a.mul_(beta).add_(c, alpha=1 - beta)

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside the block the model holds the Polyak-averaged parameters θ̂_t (eq. 44–45)."""
        if self.avg is None:
            yield
            return
        saved = self.layer_params()
        self.set_layer_params(self.avg)
        try:
            yield
        finally:
            self.set_layer_params(saved)

    # -- state -----------------------------------------------------------------------------
    def layout(self) -> List[Tuple[int, int, bool]]:
        return [(st.d_out, st.d_in, st.has_bias) for st in self.net.stages]

    def base_state(self) -> dict:
        return {"step": self.step_count, "accepted": self.accepted, "rejected": self.rejected_count,
                "avg": None if self.avg is None else [a.clone() for a in self.avg],
                "layout": self.layout(), "loss": self.loss.name, "class": type(self).__name__}

    def load_base_state(self, sd: dict) -> None:
        if sd.get("class") != type(self).__name__:
            raise ValueError(f"this state dict belongs to a {sd.get('class')}, not a {type(self).__name__}")
        layout = [tuple(x) for x in sd["layout"]]
        if layout != self.layout():
            raise ValueError(f"the state dict is for a model with layers (d_out, d_in, bias) {layout}; "
                             f"this model has {self.layout()}")
        self.step_count, self.accepted, self.rejected_count = sd["step"], sd["accepted"], sd["rejected"]
        self.avg = None if sd["avg"] is None else [a.clone() for a in sd["avg"]]
