"""Communicators: the only place where gnopt talks to other processes.

A :class:`Communicator` offers the handful of collectives that data-parallel Gauss-Newton
needs (``all_reduce_sum``/``all_reduce_mean``, ``broadcast``, ``any``) and counts the bytes
it moves (:class:`CommStats`). :class:`LocalCommunicator` is the single-process no-op;
:class:`TorchDistributedCommunicator` runs on the default (or a given) ``torch.distributed``
process group and turns a failed or timed-out collective into a :class:`DistributedError`
that says what to do.

Per step, the optimisers build a :class:`Shard` (:func:`sync_batch`): this rank's share of
the global minibatch. Every curvature statistic gnopt uses is a mean over examples, so the
global value is ``Σ_r (n_r/N) m_r`` (``m_r`` the rank's mean over its ``n_r`` examples):
``Shard.mean`` is the ``reduce`` callable threaded through the pure curvature functions.
Unequal shards are therefore *weighted by their size*, and the result equals the
single-process value on the concatenated batch up to floating-point rounding.

:class:`WorkShare` assigns the per-layer decompositions/solves to ranks (greedy, balanced
by cost) and gathers the per-layer results in one all-reduce of disjoint supports (a sum
with zeros is exact, so this *is* a broadcast from each layer's owner, coalesced).

Nothing here is global state: an optimiser holds its communicator.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

Reduce = Callable[[Tensor], Tensor]
"""``reduce(t)``: the global mean over examples of a per-rank mean ``t`` (same shape)."""

DEFAULT_TIMEOUT_S = 300.0
"""Default process-group timeout of :func:`gnopt.distributed.init`: a rank that dies or
hangs makes the others raise :class:`DistributedError` after at most this long (a dead
peer's closed socket is usually noticed at once)."""


class DistributedError(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or diverged."""


@dataclass
class CommStats:
    """Counters of a communicator: payload bytes and number of collectives.

    Payload bytes are the tensor sizes handed to the collective. On the wire a ring
    all-reduce sends about ``2 (W−1)/W`` times the payload per rank, a broadcast about
    the payload once per receiving rank.
    """

    all_reduce_bytes: int = 0
    broadcast_bytes: int = 0
    calls: int = 0
    seconds: float = 0.0  # wall time inside collectives, waiting for slower ranks included
    by_op: Dict[str, int] = field(default_factory=dict)

    def add(self, op: str, nbytes: int) -> None:
        self.calls += 1
        if op == "broadcast":
            self.broadcast_bytes += nbytes
        else:
            self.all_reduce_bytes += nbytes
        self.by_op[op] = self.by_op.get(op, 0) + 1

    def snapshot(self) -> Dict[str, int]:
        return {"all_reduce_bytes": self.all_reduce_bytes, "broadcast_bytes": self.broadcast_bytes,
                "calls": self.calls, "seconds": self.seconds}

    def reset(self) -> None:
        self.all_reduce_bytes = self.broadcast_bytes = self.calls = 0
        self.seconds = 0.0
        self.by_op.clear()


class Communicator:
    """The collectives of data-parallel training; subclasses implement :meth:`_all_reduce`
    and :meth:`_broadcast`. Results are new tensors; inputs are never modified."""

    rank: int = 0
    world_size: int = 1

    def __init__(self) -> None:
        self.stats = CommStats()

    @property
    def distributed(self) -> bool:
        """True when there is more than one rank (otherwise every collective is the identity)."""
        return self.world_size > 1

    # -- to implement ----------------------------------------------------------------------
    def _all_reduce(self, buf: Tensor) -> None:  # in place, SUM
        raise NotImplementedError

    def _broadcast(self, buf: Tensor, src: int) -> None:  # in place
        raise NotImplementedError

    # -- public ----------------------------------------------------------------------------
    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Σ over ranks of ``t`` (every rank gets the same bytes)."""
        if not self.distributed:
            return t
        buf = t.detach().clone(memory_format=torch.contiguous_format)
        self.stats.add("all_reduce", buf.numel() * buf.element_size())
        t0 = time.perf_counter()
        self._all_reduce(buf)
        self.stats.seconds += time.perf_counter() - t0
        return buf

    def all_reduce_mean(self, t: Tensor) -> Tensor:
        """The unweighted mean over ranks (use :class:`Shard` for a mean over examples)."""
        if not self.distributed:
            return t
        return self.all_reduce_sum(t) / self.world_size

    def all_reduce_sum_many(self, ts: Sequence[Tensor]) -> List[Tensor]:
        """:meth:`all_reduce_sum` of several tensors, coalesced (one collective per dtype)."""
        return reduce_many(self.all_reduce_sum, ts)

    def broadcast(self, t: Tensor, src: int = 0) -> Tensor:
        """Rank ``src``'s ``t`` on every rank."""
        if not self.distributed:
            return t
        buf = t.detach().clone(memory_format=torch.contiguous_format)
        self.stats.add("broadcast", buf.numel() * buf.element_size())
        t0 = time.perf_counter()
        self._broadcast(buf, src)
        self.stats.seconds += time.perf_counter() - t0
        return buf

    def any(self, flag: bool) -> bool:
        """True on every rank iff ``flag`` is true on at least one rank."""
        if not self.distributed:
            return bool(flag)
        return bool(self.all_reduce_sum(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)).item() > 0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size})"


class LocalCommunicator(Communicator):
    """One process: every collective returns its input unchanged (no copy, no cost)."""

    def _all_reduce(self, buf: Tensor) -> None:  # pragma: no cover - never called (world_size 1)
        pass

    def _broadcast(self, buf: Tensor, src: int) -> None:  # pragma: no cover
        pass


class TorchDistributedCommunicator(Communicator):
    """Collectives on a ``torch.distributed`` process group (default: the default group).

    A failing collective (a peer closed its connection because it died, or the group's
    ``timeout`` passed) raises :class:`DistributedError` naming the operation, the rank
    and the timeout, instead of the backend's bare message. With NCCL, CPU tensors (the
    small per-step scalars) are moved to the current CUDA device for the collective.
    """

    def __init__(self, group=None, timeout_s: Optional[float] = None) -> None:
        import torch.distributed as dist

        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise DistributedError("torch.distributed is not initialised; call gnopt.distributed.init() first "
                                   "(or start with torchrun and call it in every process)")
        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self.timeout_s = timeout_s
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else None

    def _fail(self, op: str, buf: Tensor, e: BaseException) -> DistributedError:
        t = f"{self.timeout_s:g} s" if self.timeout_s is not None else "the process group's timeout"
        return DistributedError(
            f"gnopt.distributed: {op} of {buf.numel() * buf.element_size()} bytes failed on rank {self.rank} of "
            f"{self.world_size} ({self.backend}): another rank has probably died or did not reach this collective "
            f"within {t}. Check the other ranks' logs, then restart all ranks from the last checkpoint "
            f"(saved by rank 0; it also loads in a single process). Backend error: {e}")

    def _all_reduce(self, buf: Tensor) -> None:
        dev = buf if self.device is None or buf.device == self.device else buf.to(self.device)
        try:
            self._dist.all_reduce(dev, op=self._dist.ReduceOp.SUM, group=self.group)
        except RuntimeError as e:
            raise self._fail("all_reduce", buf, e) from e
        if dev is not buf:
            buf.copy_(dev)

    def _broadcast(self, buf: Tensor, src: int) -> None:
        dev = buf if self.device is None or buf.device == self.device else buf.to(self.device)
        try:
            self._dist.broadcast(dev, src=src, group=self.group)
        except RuntimeError as e:
            raise self._fail("broadcast", buf, e) from e
        if dev is not buf:
            buf.copy_(dev)


def resolve_communicator(distributed: "str | bool | None | Communicator" = "auto") -> Communicator:
    """The communicator for an optimiser's ``distributed`` option.

    ``"auto"``: :class:`TorchDistributedCommunicator` if ``torch.distributed`` is
    initialised with more than one rank, else :class:`LocalCommunicator`; ``False``/``None``:
    local; ``True``: the process group, or an error if there is none; a
    :class:`Communicator`: itself.
    """
    if isinstance(distributed, Communicator):
        return distributed
    if distributed is None or distributed is False:
        return LocalCommunicator()
    if distributed is True or distributed == "auto":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return TorchDistributedCommunicator()
        if distributed is True:
            raise DistributedError("distributed=True but torch.distributed is not initialised with more than one "
                                   "rank; call gnopt.distributed.init() in every process first")
        return LocalCommunicator()
    raise ValueError(f"distributed must be 'auto', True, False or a Communicator; got {distributed!r}")


# -- coalescing ------------------------------------------------------------------------------
def reduce_many(reduce: Reduce, ts: Sequence[Tensor]) -> List[Tensor]:
    """Apply ``reduce`` to several tensors with one call per dtype (flatten, reduce, split)."""
    ts = list(ts)
    out: List[Optional[Tensor]] = [None] * len(ts)
    groups: Dict[Tuple[torch.dtype, torch.device], List[int]] = {}
    for i, t in enumerate(ts):
        groups.setdefault((t.dtype, t.device), []).append(i)
    for idx in groups.values():
        flat = reduce(torch.cat([ts[i].reshape(-1) for i in idx]))
        for i, part in zip(idx, flat.split([ts[i].numel() for i in idx])):
            out[i] = part.view(ts[i].shape)
    return out  # type: ignore[return-value]


# -- the batch of one step -------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """This rank's part of a step's global minibatch: sizes of all ranks, in rank order.

    The global batch is the concatenation of the ranks' batches in rank order; this rank
    holds rows ``offset:offset+n`` of it (``total`` rows in all).
    """

    comm: Communicator
    sizes: Tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def n(self) -> int:
        return self.sizes[self.comm.rank]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def offset(self) -> int:
        return sum(self.sizes[: self.comm.rank])

    @property
    def rows(self) -> Tuple[int, int]:
        """``(offset, total)``: where this shard sits in the global batch (KFAC's sampling)."""
        return self.offset, self.total

    def mean(self, t: Tensor) -> Tensor:
        """Global mean over examples from this rank's mean ``t``: Σ_r (n_r/N) t_r."""
        return self.comm.all_reduce_sum(t * (self.n / self.total))

    __call__ = mean

    def mean_many(self, ts: Sequence[Tensor]) -> List[Tensor]:
        return reduce_many(self.mean, ts)


def sync_batch(comm: Communicator, n: int, loss: Tensor) -> Tuple[Shard, Tensor, List[int]]:
    """The first collective of a step: shard sizes, the global mean loss, non-finite flags.

    One all-reduce of ``[n_r one-hot (W), bad_r one-hot (W), n_r·loss_r]``. Returns
    ``(shard, global loss, ranks whose loss is not finite)``; the loss is NaN when any
    rank's is not finite, so that every rank rejects the step together.
    """
    w, r = comm.world_size, comm.rank
    bad = not bool(torch.isfinite(loss))
    v = torch.zeros(2 * w + 1, dtype=torch.float64)
    v[r] = float(n)
    v[w + r] = 1.0 if bad else 0.0
    v[2 * w] = 0.0 if bad else float(n) * float(loss)
    v = comm.all_reduce_sum(v)
    sizes = tuple(int(round(float(s))) for s in v[:w])
    bad_ranks = [i for i in range(w) if float(v[w + i]) > 0]
    shard = Shard(comm, sizes)
    glob = float(v[2 * w]) / shard.total if not bad_ranks else math.nan
    return shard, torch.tensor(glob, dtype=loss.dtype), bad_ranks


# -- work sharing ----------------------------------------------------------------------------
def assign_layers(costs: Sequence[float], world_size: int) -> List[int]:
    """Owner rank of every layer: greedy longest-processing-time on ``costs``.

    Layers in decreasing cost (ties: lower index first) go to the least loaded rank
    (ties: lower rank). Deterministic, so every rank computes the same assignment.
    """
    load = [0.0] * world_size
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(world_size), key=lambda k: (load[k], k))
        owner[i] = r
        load[r] += costs[i]
    return owner


def kronecker_cost(d_out: int, d_in: int) -> float:
    """Cost of one layer's damped Kronecker solve set-up: d_out³ + d_in³ (two decompositions)."""
    return float(d_out) ** 3 + float(d_in) ** 3


@dataclass(frozen=True)
class WorkShare:
    """Which rank decomposes/solves which layer; see :func:`assign_layers`."""

    comm: Communicator
    owners: Tuple[int, ...]

    @classmethod
    def balanced(cls, comm: Communicator, costs: Sequence[float]) -> "WorkShare":
        return cls(comm, tuple(assign_layers(costs, comm.world_size)))

    def owns(self, i: int) -> bool:
        return self.owners[i] == self.comm.rank

    def gather(self, parts: Sequence[Tensor], failed: bool) -> Tuple[List[Tensor], int]:
        """Every layer's result from its owner (non-owners pass zeros), and the number of
        ranks that failed; one coalesced all-reduce (exact: supports are disjoint)."""
        flag = torch.tensor([1.0 if failed else 0.0], dtype=parts[0].dtype, device=parts[0].device)
        out = self.comm.all_reduce_sum_many(list(parts) + [flag])
        return out[:-1], int(round(float(out[-1].item())))
