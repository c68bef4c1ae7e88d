"""The training runner: one run folder per run, resumable bit for bit.

A run folder holds

* ``config.json`` — the :class:`~gnopt.experiments.config.TrainConfig`;
* ``metrics.jsonl`` — one JSON object per update: ``step`` (updates done), ``time_s``
  (training time, evaluation and checkpointing excluded), ``wall_s`` (wall time including
  them), ``loss`` (minibatch loss before the update) and the optimiser's statistics
  (``StepInfo.as_dict()``); every ``eval_every`` updates and at the last one also
  ``train_objective``, ``train_sq_error`` (or ``train_error_rate``) on the whole training
  set, the same with the Polyak-averaged parameters (``*_avg``, when the optimiser averages
  and the average differs from the current parameters) and ``l2`` = ½η‖θ‖²;
* ``checkpoint.pt`` — model and optimiser state, the data-order generator, the global torch
  RNG state, step and times (written atomically every ``checkpoint_every`` updates, at the
  end and on Ctrl-C);
* ``summary.json`` — how the run ended; ``objective.png`` — the plot.

Bit-identical resumption: the data order comes from a private generator whose state is in
the checkpoint, the optimiser's ``state_dict`` holds all its state and the metrics lines
after the checkpoint are dropped on resume, so 3 + 3 updates give the same parameters and
the same metrics lines (apart from times) as 6 straight — provided that the shorter run's
final evaluation falls on the ``eval_every`` grid (the last update of a run is always
evaluated).

Ctrl-C (SIGINT, with ``handle_sigint=True`` as the CLI does) is deferred to the end of the
current update; a second Ctrl-C aborts at once, leaving the previous checkpoint. A
``KeyboardInterrupt`` raised by the ``callback`` (a test hook) counts as the first kind.

Data-parallel runs (:mod:`gnopt.distributed`): ``train(..., nproc=N)`` / ``resume(...,
nproc=N)`` start N local processes (:func:`gnopt.distributed.launch`); ``comm=`` runs this
process as one rank of an existing group (torchrun, after :func:`gnopt.distributed.init`).
Every rank builds the same model and optimiser, draws the same global batch from the same
data-order generator and steps on its shard (:func:`~gnopt.distributed.local_batch`); the
stopping decisions (Ctrl-C, time budget) are agreed on once per update (``comm.any``); rank 0
alone evaluates and writes metrics, checkpoints, the summary and the plot. The checkpoint
is the same as a single process's: a distributed run resumes on any number of processes.
First-order optimisers (no gradient averaging) are refused with more than one process.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Optional, TextIO, Tuple, Union

import torch
from torch import nn

from ..models import model_for_dataset
from ..numerics import matmul_precision
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, state_to_device
from .config import RESUME_OVERRIDABLE, TrainConfig
from .evaluate import evaluate, l2_term
from .metrics import MetricsWriter, optional_plot, read_metrics, truncate_metrics, write_json_atomic
from .progress import ProgressBar
from .sampler import BatchSampler

__all__ = [
    "RunResult", "train", "resume", "load_data", "build_model", "build_optimizer", "optimizer_kwargs",
    "default_run_dir", "check_distributed", "CONFIG_NAME", "METRICS_NAME", "SUMMARY_NAME", "PLOT_NAME", "run_is_finished",
]

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
PLOT_NAME = "objective.png"
BLOCK_WARN_SIZE = 2000

PathLike = Union[str, Path]
Callback = Callable[[Dict[str, Any]], None]


@dataclass
class RunResult:
    """How a run ended: ``reason`` is "steps", "time_budget" or "interrupted"."""

    run_dir: Path
    step: int
    time_s: float
    reason: str
    last: Dict[str, Any] = field(default_factory=dict)
    plot: Optional[Path] = None

    @property
    def interrupted(self) -> bool:
        return self.reason == "interrupted"


# -- building blocks -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Data:
    x: torch.Tensor
    y: torch.Tensor
    loss: str
    input_dim: int


def load_data(config: TrainConfig) -> _Data:
    """The training split of ``config.dataset`` (first ``limit`` examples), in ``config.dtype``."""
    from ..data import load_dataset

    opts = dict(config.dataset_opts)
    if config.dataset == "curves" and config.limit is not None:
        # CURVES images are generated one by one: the first k do not depend on the total.
        opts.setdefault("n_train", config.limit)
        opts.setdefault("n_test", 0)
        opts.setdefault("cache", False)
    ds = load_dataset(config.dataset, "train", data_dir=config.data_dir, **opts)
    x, y = ds.x, ds.y
    if config.limit is not None:
        x, y = x[:config.limit], y[:config.limit]
    dtype = getattr(torch, config.dtype)
    x = x.to(dtype).contiguous()
    y = x if ds.y is ds.x else y.to(dtype).contiguous()
    return _Data(x=x, y=y, loss=ds.loss, input_dim=int(ds.input_dim))


def build_model(config: TrainConfig, input_dim: int) -> nn.Sequential:
    """The paper's net for ``config.dataset`` with the configured options (seeded by ``seed``)."""
    return model_for_dataset(config.dataset, input_dim, widths=config.widths, activation=config.activation,
                             code_linear=config.code_linear, init=config.init, seed=config.seed,
                             dtype=getattr(torch, config.dtype))


def optimizer_kwargs(config: TrainConfig) -> Dict[str, Any]:
    """The keyword arguments for ``gnopt.make_optimizer`` (before signature filtering)."""
    fam = config.family
    kw: Dict[str, Any] = {"weight_decay": config.weight_decay, "seed": config.seed}
    if fam == "second":
        kw.update(damping=config.damping, curvature_ema=config.curvature_ema)
    elif fam == "first":
        kw.update(lr=config.lr, decay_period=config.decay_period)
    kw.update(config.opt_options)
    return kw


def _optimizer_class(name: str):
    import gnopt

    fam = TrainConfig(optimizer=name).family
    return {"second": "GaussNewton", "hf": "HessianFree", "first": "FirstOrder"}[fam], gnopt


def build_optimizer(config: TrainConfig, model: nn.Module, loss: str):
    """``gnopt.make_optimizer(config.optimizer, model, loss, ...)``.

    ``weight_decay`` and ``seed`` are passed only to optimisers whose constructor takes them
    (a warning says so if a non-zero weight decay is dropped; the seed also seeds the model
    and the data order); everything else is passed as is.
    """
    cls_name, gnopt = _optimizer_class(config.optimizer)
    kw = optimizer_kwargs(config)
    cls = getattr(gnopt, cls_name, None)
    if cls is not None:
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if not takes_any:
            # ``seed`` also seeds the model and the data order, so dropping it is silent.
            for name, default in (("weight_decay", 0.0), ("seed", None)):
                if name in kw and name not in params and name not in config.opt_options:
                    if default is not None and kw[name] != default:
                        warnings.warn(f"{cls_name} takes no {name!r}; ignoring {name}={kw[name]}", RuntimeWarning)
                    del kw[name]
    if config.optimizer == "block":
        biggest = max(m.out_features * (m.in_features + 1) for m in model.modules() if isinstance(m, nn.Linear))
        if biggest > BLOCK_WARN_SIZE:
            warnings.warn(f"'block' curvature forms and decomposes dense per-layer GN blocks; the largest here is "
                          f"{biggest}x{biggest}, which is very slow (meant for small nets)", RuntimeWarning)
    return gnopt.make_optimizer(config.optimizer, model, loss, **kw)


def default_run_dir(config: TrainConfig, root: PathLike = "runs") -> Path:
    """``runs/<dataset>-<optimizer>-<YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3`` … if taken)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{config.dataset}-{config.optimizer}-{stamp}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def run_is_finished(run_dir: PathLike) -> bool:
    """Whether ``run_dir`` holds a run that reached its number of steps."""
    p = Path(run_dir) / SUMMARY_NAME
    if not p.is_file():
        return False
    import json

    try:
        s = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    return s.get("reason") == "steps" and s.get("step", -1) >= s.get("steps", math.inf)


class _DeferSigint:
    """Within the block, the first SIGINT only sets ``requested``; the second raises."""

    def __init__(self, enabled: bool, stream: TextIO) -> None:
        self.enabled = enabled
        self.stream = stream
        self.requested = False
        self._old: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.stream.write("\ninterrupt: stopping after this update (Ctrl-C again to abort now)\n")
        self.stream.flush()

    def __enter__(self) -> "_DeferSigint":
        if self.enabled and threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
                self._installed = True
            except ValueError:
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old)
            self._installed = False


def _evaluate_into(record: Dict[str, Any], model: nn.Module, opt: Any, data: _Data, config: TrainConfig) -> None:
    ev = evaluate(model, data.x, data.y, data.loss, config.eval_chunk)
    for k, v in ev.items():
        record[f"train_{k}"] = v
    record["l2"] = l2_term(model, config.weight_decay)
    if config.eval_averaged and hasattr(opt, "averaged"):
        current = [p.detach().clone() for p in model.parameters()]
        with opt.averaged():
            if any(not torch.equal(p, c) for p, c in zip(model.parameters(), current)):
                ev = evaluate(model, data.x, data.y, data.loss, config.eval_chunk)
            else:  # no averaging (first-order methods, or before the first average)
                ev = {}
        for k, v in ev.items():
            record[f"train_{k}_avg"] = v


def _checkpoint_state(model: nn.Module, opt: Any, sampler: BatchSampler, step: int, time_s: float,
                      wall_s: float, config: TrainConfig) -> Dict[str, Any]:
    return {"step": step, "time_s": time_s, "wall_s": wall_s, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state(),
            "config": config.to_dict()}


def _make_plot(run_dir: Path, stream: TextIO) -> Optional[Path]:
    out = run_dir / PLOT_NAME
    try:
        return out if optional_plot("plot_runs", [run_dir], out, stream=stream) else None
    except Exception as e:  # a plot must never lose a run
        stream.write(f"plotting failed: {e!r}\n")
    return None


# -- the loop --------------------------------------------------------------------------------
def run_device(config: TrainConfig) -> torch.device:
    """The run's torch device; ``ValueError`` naming the problem if torch cannot use it."""
    dev = torch.device(config.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r}: this torch ({torch.__version__}) sees no CUDA device "
                             "(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {config.device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        try:
            torch.empty(1, device=dev)
        except Exception as e:
            raise ValueError(f"device {config.device!r} is not usable here: {e}") from e
    return dev


def check_distributed(config: TrainConfig, world_size: int) -> None:
    """Refuse what cannot run data-parallel on ``world_size`` processes (``ValueError``)."""
    if world_size <= 1:
        return
    if torch.device(config.device).type != "cpu":
        raise ValueError(f"data-parallel training runs on CPU processes (gloo); device {config.device!r} with "
                         f"{world_size} processes is not supported: use one process on the GPU")
    if config.family == "first":
        raise ValueError(f"{config.optimizer!r} is a first-order optimiser and does no gradient averaging across "
                         f"processes: it cannot train on {world_size} processes; use one process (--nproc 1) or "
                         f"a second-order optimiser (kfra, kflr, kfac, block, hf)")
    n = config.batch_size if config.limit is None else min(config.batch_size, config.limit)
    if n < world_size:
        raise ValueError(f"a global batch of {n} examples cannot give each of {world_size} processes one")


def _run(config: TrainConfig, run_dir: Path, ckpt: Optional[Dict[str, Any]], *, progress: bool, stream: TextIO,
         callback: Optional[Callback], handle_sigint: bool, plot: bool, comm: Any = None) -> RunResult:
    """:func:`_train_loop` under the run's ``matmul_precision`` (every rank sets it; the
    process's previous setting is restored afterwards)."""
    with matmul_precision(config.matmul_precision):
        return _train_loop(config, run_dir, ckpt, progress=progress, stream=stream, callback=callback,
                           handle_sigint=handle_sigint, plot=plot, comm=comm)


def _train_loop(config: TrainConfig, run_dir: Path, ckpt: Optional[Dict[str, Any]], *, progress: bool,
                stream: TextIO, callback: Optional[Callback], handle_sigint: bool, plot: bool,
                comm: Any = None) -> RunResult:
    from ..distributed import LocalCommunicator, local_batch

    assert config.steps is not None
    comm = LocalCommunicator() if comm is None else comm
    check_distributed(config, comm.world_size)
    main = comm.rank == 0
    if not main:  # only rank 0 talks
        stream, progress, plot = io.StringIO(), False, False
    if main:
        data = load_data(config)
    comm.any(False)  # the other ranks load the data once rank 0 has generated/cached it
    if not main:
        data = load_data(config)
    dev = run_device(config)
    if dev.type != "cpu":  # the whole training set goes to the device once (batches are then views)
        x_dev = data.x.to(dev)
        data = dataclasses.replace(data, x=x_dev, y=x_dev if data.y is data.x else data.y.to(dev))
    model = build_model(config, data.input_dim).to(dev)  # initialised on the CPU: the same on every device
    opt = build_optimizer(config, model, data.loss)
    sampler = BatchSampler(int(data.x.shape[0]), config.batch_size, config.seed)
    metrics_path = run_dir / METRICS_NAME
    step, time_s, wall_s = 0, 0.0, 0.0
    last: Dict[str, Any] = {}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"] if dev.type == "cpu" else state_to_device(ckpt["optimizer"], dev))
        sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, time_s, wall_s = int(ckpt["step"]), float(ckpt["time_s"]), float(ckpt["wall_s"])
        if main:
            kept = truncate_metrics(metrics_path, step)
            last = kept[-1] if kept else {}
    writer: Optional[MetricsWriter] = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG_NAME, config.to_dict())
        writer = MetricsWriter(metrics_path, "a" if ckpt is not None else "w")
    bar = ProgressBar(config.steps, stream, enabled=progress, time_budget=config.time_budget)
    budget = config.time_budget

    def out_of_time() -> bool:
        return budget is not None and time_s >= budget

    reason = "steps" if step >= config.steps else ("time_budget" if out_of_time() else "")
    # True when model, optimiser, sampler, step and metrics file agree: false from the start of an
    # update until its metrics line is written (an abort in between keeps the last checkpoint).
    consistent = True
    wall0 = time.perf_counter() - wall_s
    try:
        with _DeferSigint(handle_sigint, stream) as sigint:
            while not reason:
                if comm.any(sigint.requested):  # every rank stops together
                    raise KeyboardInterrupt
                consistent = False
                idx = sampler.next()  # the same global batch on every rank
                x, y = data.x[idx], data.y[idx]
                if comm.distributed:
                    x, y = local_batch(x, y, comm)
                t0 = time.perf_counter()
                info = opt.step(x, y)
                dt = time.perf_counter() - t0
                step, time_s = step + 1, time_s + dt
                timeup = comm.any(out_of_time())  # local clocks differ: agree
                final = step >= config.steps or timeup
                record: Dict[str, Any] = info.as_dict() if hasattr(info, "as_dict") else {"loss": float(info.loss)}
                record.update(step=step, time_s=time_s)
                if main and (final or (config.eval_every and step % config.eval_every == 0)):
                    _evaluate_into(record, model, opt, data, config)  # the others wait at the next collective
                wall_s = time.perf_counter() - wall0
                record["wall_s"] = wall_s
                if writer is not None:
                    writer.write(record)
                consistent = True  # the update and its metrics line are both done
                last = record
                if final:
                    reason = "steps" if step >= config.steps else "time_budget"
                if main and (final or step % config.checkpoint_every == 0):
                    save_checkpoint(run_dir / CHECKPOINT_NAME,
                                    _checkpoint_state(model, opt, sampler, step, time_s, wall_s, config))
                bar.update(step, record.get("loss"), step / time_s if time_s > 0 else None, time_s, force=final)
                if callback is not None:
                    callback(record)
    except KeyboardInterrupt:
        reason = "interrupted"
        bar.close()
        if consistent and main:
            save_checkpoint(run_dir / CHECKPOINT_NAME,
                            _checkpoint_state(model, opt, sampler, step, time_s, time.perf_counter() - wall0, config))
        elif not consistent:
            stream.write("aborted inside an update: keeping the previous checkpoint\n")
    finally:
        if writer is not None:
            writer.close()
        bar.close()
    summary = {"reason": reason, "step": step, "steps": config.steps, "time_s": time_s,
               "last": {k: v for k, v in last.items() if k.startswith("train_") or k in ("loss", "step")}}
    if main:
        write_json_atomic(run_dir / SUMMARY_NAME, summary)
    png = _make_plot(run_dir, stream) if plot and metrics_path.exists() else None
    return RunResult(run_dir=run_dir, step=step, time_s=time_s, reason=reason, last=last, plot=png)


def _worker(comm: Any, config: TrainConfig, run_dir: str, ckpt_path: Optional[str], progress: bool,
            callback: Optional[Callback], handle_sigint: bool, plot: bool) -> RunResult:
    """One rank of :func:`_launch` (module level: ranks are spawned)."""
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    return _run(config, Path(run_dir), ckpt, progress=progress, stream=sys.stderr, callback=callback,
                handle_sigint=handle_sigint, plot=plot, comm=comm)


def _launch(config: TrainConfig, run_dir: Path, ckpt_path: Optional[Path], nproc: int, threads: Optional[int], *,
            progress: bool, callback: Optional[Callback], handle_sigint: bool, plot: bool) -> RunResult:
    """Run :func:`_worker` on ``nproc`` local processes; rank 0's result.

    Every rank loads the checkpoint itself. Ctrl-C reaches all ranks (one process group),
    which stop together; here the first one is ignored and a second aborts.
    """
    from ..distributed import launch

    check_distributed(config, nproc)
    args = (config, str(run_dir), None if ckpt_path is None else str(ckpt_path), progress, callback,
            handle_sigint, plot)
    with _DeferSigint(handle_sigint, io.StringIO()):
        results = launch(_worker, nproc, args, threads=threads)
    return results[0]


def train(config: TrainConfig, run_dir: Optional[PathLike] = None, *, progress: bool = True,
          stream: Optional[TextIO] = None, callback: Optional[Callback] = None, handle_sigint: bool = False,
          plot: bool = True, nproc: int = 1, threads: Optional[int] = None, comm: Any = None) -> RunResult:
    """Train from scratch into ``run_dir`` (default :func:`default_run_dir`).

    ``config`` is :meth:`~TrainConfig.resolved` first. ``callback(record)`` is called after
    every update with the logged record (after the checkpoint, if one was due); raising
    ``KeyboardInterrupt`` from it stops the run as Ctrl-C does. Refuses a folder that already
    holds a run (use :func:`resume`).

    ``nproc > 1``: data-parallel on that many local processes (``threads`` torch threads
    each; the callback must be picklable and runs on every rank; progress goes to stderr).
    ``comm``: run as one rank of an initialised group (torchrun; give every rank the same
    ``run_dir``). Returns rank 0's result (a rank's own under ``comm``).
    """
    stream = sys.stderr if stream is None else stream
    config = config.resolved()
    run_dir = default_run_dir(config) if run_dir is None else Path(run_dir)
    exists = (run_dir / METRICS_NAME).exists() or (run_dir / CHECKPOINT_NAME).exists()
    if comm is not None:
        check_distributed(config, comm.world_size)
        exists = comm.any(exists)  # every rank checks before rank 0 writes
    if exists:
        raise FileExistsError(f"{run_dir} already holds a run; resume it or choose another folder")
    if nproc > 1 and comm is None:
        return _launch(config, run_dir, None, nproc, threads, progress=progress, callback=callback,
                       handle_sigint=handle_sigint, plot=plot)
    return _run(config, run_dir, None, progress=progress, stream=stream, callback=callback,
                handle_sigint=handle_sigint, plot=plot, comm=comm)


def load_run_config(run_dir: PathLike) -> TrainConfig:
    return TrainConfig.from_json((Path(run_dir) / CONFIG_NAME).read_text())


def resume(run_dir: PathLike, overrides: Optional[Dict[str, Any]] = None, *, progress: bool = True,
           stream: Optional[TextIO] = None, callback: Optional[Callback] = None, handle_sigint: bool = False,
           plot: bool = True, nproc: int = 1, threads: Optional[int] = None, comm: Any = None) -> RunResult:
    """Continue the run in ``run_dir`` from its checkpoint, exactly as if never stopped.

    ``overrides`` may change only :data:`~gnopt.experiments.config.RESUME_OVERRIDABLE`
    fields (e.g. ``steps`` to extend a finished run); any other field that differs from
    ``config.json`` raises ``ValueError``. ``nproc``, ``threads``, ``comm``: as in
    :func:`train`; the number of processes may differ from the run's (every rank loads the
    same checkpoint).
    """
    stream = sys.stderr if stream is None else stream
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{run_dir} holds no {CONFIG_NAME}: not a gnopt run folder")
    config = load_run_config(run_dir)
    changes = {}
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        cur = getattr(config, k)
        if k == "widths":
            v = tuple(v)
        if v != cur:
            if k not in RESUME_OVERRIDABLE:
                raise ValueError(f"--resume cannot change {k!r} ({cur!r} -> {v!r}); only {RESUME_OVERRIDABLE}")
            changes[k] = v
    config = config.replace(**changes).resolved() if changes else config.resolved()
    ckpt_path = run_dir / CHECKPOINT_NAME
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if ckpt is not None:
        saved = TrainConfig.from_dict(ckpt["config"])
        fixed = {k: v for k, v in saved.to_dict().items() if k not in RESUME_OVERRIDABLE}
        mine = {k: v for k, v in config.to_dict().items() if k not in RESUME_OVERRIDABLE}
        if fixed != mine:
            raise ValueError(f"{run_dir}: config.json does not match the checkpoint's configuration")
    elif comm is None or comm.rank == 0:
        stream.write(f"{run_dir}: no checkpoint yet, starting from the beginning\n")
    if nproc > 1 and comm is None:
        return _launch(config, run_dir, ckpt_path if ckpt is not None else None, nproc, threads, progress=progress,
                       callback=callback, handle_sigint=handle_sigint, plot=plot)
    return _run(config, run_dir, ckpt, progress=progress, stream=stream, callback=callback,
                handle_sigint=handle_sigint, plot=plot, comm=comm)


def read_run(run_dir: PathLike) -> Tuple[TrainConfig, list]:
    """``(config, records)`` of a run folder."""
    run_dir = Path(run_dir)
    return load_run_config(run_dir), read_metrics(run_dir / METRICS_NAME)
