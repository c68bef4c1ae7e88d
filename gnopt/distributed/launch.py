"""Starting processes and process groups: :func:`init`, :func:`launch`, :func:`local_batch`.

Two ways to run gnopt on N processes:

* **torchrun** (one or several machines)::

      torchrun --nproc_per_node N -m gnopt train ...   # or your own script

  where every process calls ``comm = gnopt.distributed.init()`` (``env://``: torchrun sets
  RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) before building the optimiser.

* **launch** (one machine, no torchrun): ``gnopt.distributed.launch(fn, nproc, args)``
  starts ``nproc`` processes (spawn), initialises a gloo group on a file store in a
  temporary folder and calls ``fn(comm, *args)`` in each; it returns the ranks' return values.

In both cases every rank builds the *same* model and optimiser (same seed), draws the *same*
global minibatch and passes its own shard (:func:`local_batch`) to ``opt.step(x, y)``; the
optimiser finds the process group by itself (``distributed="auto"``). Only rank 0 should
write logs and checkpoints (the optimiser state is identical on every rank).

A training loop on N processes (what ``gnopt train --nproc N`` runs: ``launch(worker, N,
(config, run_dir, ...))`` on one machine, or the same worker under torchrun after
``comm = init()``) must keep every decision that leads to a collective identical on all
ranks:

* same seed for the model, the data order and the optimiser on every rank; draw the
  global batch indices as one process would, then ``x, y = local_batch(X[idx], Y[idx],
  comm)`` (the global batch size stays the configured one);
* decisions taken from local clocks or signals (a time budget, a deferred Ctrl-C) must be
  agreed on: ``stop = comm.any(local_stop)`` once per step (an 8-byte all-reduce);
  otherwise one rank leaves the loop and the others fail with :class:`DistributedError`
  after the timeout;
* rank 0 alone writes metrics, checkpoints, progress bars and plots; evaluation needs no
  communication (run it on rank 0, or everywhere: the parameters are identical);
* resuming: every rank loads the same checkpoint (a single-process checkpoint works too);
* first-order optimisers (``FirstOrder``) do no reductions: refuse them with ``--nproc > 1``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import timedelta
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .comm import DEFAULT_TIMEOUT_S, Communicator, DistributedError, LocalCommunicator, TorchDistributedCommunicator


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher setting WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init(backend: Optional[str] = None, *, timeout_s: float = DEFAULT_TIMEOUT_S, init_method: Optional[str] = None,
         rank: Optional[int] = None, world_size: Optional[int] = None, store=None) -> Communicator:
    """Initialise the default process group (unless it is already) and return its communicator.

    Args:
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (GPUs); default nccl if CUDA is available,
            else gloo.
        timeout_s: the group's timeout (default :data:`DEFAULT_TIMEOUT_S` = 300 s): a rank
            that dies or stops participating makes the others raise
            :class:`DistributedError` after at most this long instead of hanging. With NCCL
            the timeout is enforced by its watchdog (``TORCH_NCCL_ASYNC_ERROR_HANDLING``,
            on by default), which aborts the process.
        init_method: e.g. ``"env://"`` (default; what torchrun sets up), ``"tcp://host:port"``
            or ``"file:///path"``. rank, world_size: needed unless given by the environment.
        store: a ``torch.distributed.Store`` instead of ``init_method``.

    With a single process (``WORLD_SIZE`` unset or 1, no rank/world_size given) no group is
    created and a :class:`LocalCommunicator` is returned.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed")
    if dist.is_initialized():
        return TorchDistributedCommunicator(timeout_s=timeout_s)
    if world_size is None and store is None and init_method in (None, "env://") and not launched_by_torchrun():
        return LocalCommunicator()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    kw: dict = {"timeout": timedelta(seconds=float(timeout_s))}
    if store is not None:
        kw["store"] = store
    else:
        kw["init_method"] = init_method or "env://"
    if rank is not None:
        kw["rank"] = rank
    if world_size is not None:
        kw["world_size"] = world_size
    if backend == "nccl" and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, **kw)
    return TorchDistributedCommunicator(timeout_s=timeout_s)


def shutdown() -> None:
    """Destroy the default process group if there is one (ignores errors from dead peers)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - a peer may be gone
            pass


def shard_range(n: int, rank: int, world_size: int) -> Tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` when ``n`` rows are split as evenly as possible
    (the first ``n mod W`` ranks get one more), in rank order."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def local_batch(x: Tensor, y: Tensor, comm: Communicator) -> Tuple[Tensor, Tensor]:
    """This rank's contiguous shard of a global minibatch ``(x, y)`` (see :func:`shard_range`).

    Shards then differ in size by at most one row; the optimisers weight ranks by size, so
    training equals single-process training on ``(x, y)`` either way. Every rank needs at
    least one row (a global batch of at least ``world_size``).
    """
    if x.shape[0] < comm.world_size:
        raise ValueError(f"a global batch of {x.shape[0]} rows cannot give each of {comm.world_size} ranks a row")
    a, b = shard_range(x.shape[0], comm.rank, comm.world_size)
    return x[a:b], y[a:b]


def _entry(rank: int, fn: Callable, args: Sequence[Any], nproc: int, folder: str, backend: str, timeout_s: float,
           threads: Optional[int]) -> None:
    if threads:
        torch.set_num_threads(threads)
    comm = init(backend, timeout_s=timeout_s, init_method=f"file://{os.path.join(folder, 'store')}", rank=rank,
                world_size=nproc)
    try:
        out = fn(comm, *args)
        tmp = os.path.join(folder, f"result_{rank}.pt.tmp")
        torch.save(out, tmp)
        os.replace(tmp, os.path.join(folder, f"result_{rank}.pt"))
    finally:
        shutdown()


def launch(fn: Callable[..., Any], nproc: int, args: Sequence[Any] = (), *, backend: str = "gloo",
           timeout_s: float = DEFAULT_TIMEOUT_S, threads: Optional[int] = None,
           deadline_s: Optional[float] = None) -> List[Any]:
    """Run ``fn(comm, *args)`` on ``nproc`` local processes sharing a fresh process group.

    ``fn`` must be importable (a module-level function: processes are spawned) and its
    return value picklable. ``nproc == 1`` calls ``fn(LocalCommunicator(), *args)`` here.
    ``threads``: torch threads per process (default ``cpu_count // nproc``, at least 1).
    ``deadline_s``: kill everything and raise ``TimeoutError`` after this long.

    Returns the ranks' return values, in rank order (``None`` for a rank that exited
    without returning). Raises :class:`DistributedError` with the failing rank's traceback
    if a rank raises or exits with an error.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1; got {nproc}")
    if nproc == 1:
        return [fn(LocalCommunicator(), *args)]
    import torch.multiprocessing as mp

    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // nproc)
    folder = tempfile.mkdtemp(prefix="gnopt-launch-")
    try:
        ctx = mp.start_processes(_entry, args=(fn, tuple(args), nproc, folder, backend, timeout_s, threads),
                                 nprocs=nproc, join=False, start_method="spawn")
        start = time.monotonic()
        try:
            while not ctx.join(timeout=0.5):
                if deadline_s is not None and time.monotonic() - start > deadline_s:
                    for p in ctx.processes:
                        if p.is_alive():
                            p.kill()
                    raise TimeoutError(f"gnopt.distributed.launch: {nproc} processes did not finish in {deadline_s} s")
        except mp.ProcessException as e:
            raise DistributedError(f"rank {e.error_index} of {nproc} failed: {e}") from None
        out = []
        for r in range(nproc):
            path = os.path.join(folder, f"result_{r}.pt")
            out.append(torch.load(path, weights_only=False) if os.path.exists(path) else None)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)
