"""Multi-process data-parallel training on ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

Usage (every rank runs the same code, e.g. under ``torchrun --nproc_per_node N``)::

    comm = gnopt.distributed.init()                  # env:// from torchrun; timeout 300 s
    opt = gnopt.GaussNewton(model, "bce", "kfra")    # finds the process group itself
    for x, y in global_batches:                      # the same global batches on every rank
        info = opt.step(*gnopt.distributed.local_batch(x, y, comm))
    if comm.rank == 0:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)

What the optimisers do when the default group has more than one rank (``distributed="auto"``;
``distributed=False`` keeps a process on its own; an explicit :class:`Communicator` can be
injected), so that every rank takes the identical step and the result equals single-process
training on the concatenated global batch (to floating-point rounding):

* the first collective of a step all-reduces the shard sizes, the loss and a non-finite
  flag: if any rank's loss is not finite, every rank rejects the step;
* gradients, the factors Q and (KFLR/KFAC) G, the dense ``block`` curvature, the
  quadratic-model term δᵀḠδ, Hessian-free's Ḡv products and the objective for ρ and the
  line search are means over examples, all-reduced weighted by shard size (unequal shards
  are allowed and weighted; each rank needs at least one example);
* KFRA (eq. 26) is not linear in the batch: the top E[B H B] and every (1/N) Σ f' f'ᵀ are
  all-reduced *inside* the recursion (one all-reduce per layer, ``Expected(reduce=...)``);
* KFAC draws its Monte-Carlo targets for the *global* batch from the shared generator
  (identical on every rank) and keeps its own rows, so it is exactly equivalent too;
* ``work_sharing=True`` (default): each layer's decompositions and solve run on one rank
  (greedy by d_out³ + d_in³) and the directions are gathered in one all-reduce; with
  ``work_sharing=False`` everything is replicated (identical results);
* at construction, rank 0's parameters are broadcast (as DistributedDataParallel does);
  a DDP-wrapped model is unwrapped (gnopt does its own reductions);
* a rank that dies makes the others raise :class:`DistributedError` within the group's
  timeout (``init(timeout_s=...)``, default 300 s).

Checkpoints: ``state_dict()`` is identical on every rank; save rank 0's. It loads in a
single process (and in any number of processes).
"""

from .comm import (DEFAULT_TIMEOUT_S, CommStats, Communicator, DistributedError, LocalCommunicator, Reduce, Shard,
                   TorchDistributedCommunicator, WorkShare, assign_layers, kronecker_cost, reduce_many,
                   resolve_communicator, sync_batch)
from .launch import init, launch, launched_by_torchrun, local_batch, shard_range, shutdown

__all__ = [
    "Communicator", "LocalCommunicator", "TorchDistributedCommunicator", "CommStats", "DistributedError",
    "Shard", "WorkShare", "Reduce", "sync_batch", "reduce_many", "assign_layers", "kronecker_cost",
    "resolve_communicator", "init", "launch", "launched_by_torchrun", "local_batch", "shard_range", "shutdown",
    "DEFAULT_TIMEOUT_S",
]
