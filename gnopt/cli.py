"""The ``gnopt`` command line: train, grid, plot, align, rank, surface, bench.

``gnopt <command> --help`` documents every command. With no arguments ``gnopt train`` trains
KFRA on CURVES with the paper's net for about three minutes of training time and prints
where the results are.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

__all__ = ["main", "build_parser", "train_config_from_args"]

_STAMP = "%Y%m%d-%H%M%S"



def _stamp() -> str:
    return datetime.now().strftime(_STAMP)


# -- argument helpers ------------------------------------------------------------------------
def _widths(text: str):
    from .models import parse_widths

    try:
        return parse_widths(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _int_list(text: str) -> tuple:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> tuple:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _exponents(text: str) -> tuple:
    """"6:13" (inclusive range) or "6,8,10"."""
    if ":" in text:
        try:
            lo, hi = (int(t) for t in text.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LO:HI or a comma list, got {text!r}") from None
        step = 1 if hi >= lo else -1
        return tuple(range(lo, hi + step, step))
    return _float_list(text)


def _key_value(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        val = json.loads(v)
    except ValueError:
        val = v
    return k.strip(), val


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a default where one is set (options whose default is None state it in words)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        d = action.default
        if "%(default)" not in h and action.option_strings and d is not None and d is not argparse.SUPPRESS and not isinstance(d, bool) and d != []:
            if isinstance(d, tuple):
                h += " (default: " + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in d) + ")"
            else:
                h += " (default: %(default)s)"
        return h


def _add_model_args(p: argparse.ArgumentParser, widths_default: str = "the paper's 1000,500,250,30") -> None:
    from .models import ACTIVATION_NAMES, INIT_NAMES

    g = p.add_argument_group("model (gnopt.models)")
    g.add_argument("--widths", type=_widths, default=None,
                   help=f"encoder widths, comma-separated; the decoder mirrors them (default: {widths_default})")
    g.add_argument("--activation", choices=ACTIVATION_NAMES, default=None, help="hidden transfer function (default sigmoid)")
    g.add_argument("--code-linear", dest="code_linear", action="store_true", default=None,
                   help="linear code layer (default for the autoencoders)")
    g.add_argument("--no-code-linear", dest="code_linear", action="store_false",
                   help="transfer function on the code layer too (default for the classifier)")
    g.add_argument("--init", choices=INIT_NAMES, default=None, help="initialisation (default sparse)")


def _add_data_args(p: argparse.ArgumentParser, default_dataset: str = "curves", limit_help: str = "") -> None:
    from .experiments.config import DATASETS

    g = p.add_argument_group("data (gnopt.data)")
    g.add_argument("--dataset", choices=DATASETS, default=None, help=f"data set (default {default_dataset})")
    g.add_argument("--data-dir", default=None, help="data directory (default $GNOPT_DATA, else ~/.cache/gnopt)")
    g.add_argument("--limit", type=_positive_int, default=None,
                   help="use only the first N training examples" + limit_help)


# -- the parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .experiments.config import DEFAULT_TIME_BUDGET, OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="gnopt", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Practical Gauss-Newton optimisation for deep learning (Botev, Ritter & Barber, 2017).",
        epilog="Run 'gnopt <command> --help' for the options of a command. 'gnopt train' with no arguments "
               "trains KFRA on CURVES for about three minutes.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gnopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")

    # train ------------------------------------------------------------------------------
    p = sub.add_parser("train", help="train a net, writing a resumable run folder", formatter_class=_Formatter,
                       description=(
                           "Train one of the paper's nets and write a run folder: config.json, metrics.jsonl (one "
                           "JSON object per update; periodically the full-training-set objective and squared "
                           "reconstruction error, also with Polyak-averaged parameters), checkpoint.pt, "
                           "summary.json and objective.png.\n\n"
                           f"Without --steps and --time-budget the run is capped at {DEFAULT_TIME_BUDGET:g} s of "
                           "training time (the paper's number of updates otherwise: 5,000 second-order, 40,000 "
                           "first-order; 4x that on FACES). Ctrl-C stops after the current update and leaves a "
                           "checkpoint; --resume RUN continues bit-identically.\n\n"
                           "Data-parallel training (second-order optimisers and hf only): --nproc N starts N "
                           "processes on this machine (gloo; --threads T torch threads each), or start under "
                           "torchrun, e.g.\n"
                           "  torchrun --nproc_per_node N -m gnopt train --out RUN ...\n"
                           "(every rank needs the same --out; for several machines, on a shared file system). "
                           "Every rank draws the same global minibatch of --batch-size examples and steps on its "
                           "share, so the run equals a one-process run up to rounding; rank 0 alone evaluates "
                           "and writes metrics, checkpoints and plots. A run resumes on any number of "
                           "processes (--resume RUN --nproc M)."))
    p.add_argument("--optimizer", "-o", choices=OPTIMIZERS, default=None, help="optimiser (default kfra)")
    _add_data_args(p)
    g = p.add_argument_group("budget")
    g.add_argument("--steps", type=_positive_int, default=None, help="number of updates")
    g.add_argument("--time-budget", type=float, default=None, help="seconds of training time (evaluation excluded)")
    g = p.add_argument_group("distributed (gnopt.distributed)")
    g.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (not with first-order optimisers; not under "
                        "torchrun, which sets the number itself)")
    g = p.add_argument_group("optimiser")
    g.add_argument("--batch-size", type=_positive_int, default=None,
                   help="(global) minibatch size (default 1000)")
    g.add_argument("--seed", type=int, default=None, help="seed of initialisation, data order and sampling (default 0)")
    g.add_argument("--weight-decay", type=float, default=None, help="L2 weight eta (default 1e-5)")
    g.add_argument("--curvature-ema", type=float, default=None,
                   help="moving-average factor of the curvature factors; the paper compares 0 and 0.9 (default 0)")
    g.add_argument("--damping", choices=("factored", "eigen"), default=None,
                   help="factored: approximate inversion of eq. 36 (KFRA*); eigen: exact (default factored)")
    g.add_argument("--factor-period", type=_positive_int, default=None,
                   help="second order: refresh the curvature factors every K updates (default 10; 1 = the paper's "
                        "Algorithm 1)")
    g.add_argument("--step-size-fraction", type=float, default=None,
                   help="second order: share of the minibatch for the curvature term of the step size, eq. 41, "
                        "and for the reduction ratio rho, eq. 42 (default 0.25; 1 = the paper's Algorithm 1)")
    g.add_argument("--step-size-check", type=float, default=None, metavar="C",
                   help="second order, with a step-size fraction below 1: use the whole minibatch for that "
                        "update when the rows' mean loss is off the batch's by more than C times it "
                        "(default 0.1; 0 = off)")
    g.add_argument("--step-guard", type=float, default=None, metavar="K",
                   help="second order: verify by the loss any step longer than K times the average step and "
                        "back-track it (default 3; 0 = off)")
    g.add_argument("--lr", type=float, default=None, help="first-order learning rate (default 1e-3)")
    g.add_argument("--decay-period", type=_positive_int, default=None,
                   help="first-order: halve the learning rate every T updates (default never)")
    g.add_argument("--opt", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="further optimiser keyword argument (JSON value), e.g. --opt T_gamma=20; repeatable")
    _add_model_args(p)
    g.add_argument("--dtype", choices=("float32", "float64"), default=None, help="parameter dtype (default float32)")
    g.add_argument("--matmul-precision", choices=("highest", "high", "medium"), default=None,
                   help="torch.set_float32_matmul_precision during the run (default highest; medium: on CPUs with "
                        "AVX512-BF16 about twice as fast at close to float32 accuracy, see the README)")
    g.add_argument("--device", default=None,
                   help="torch device of the model, data and optimiser: cpu, cuda, cuda:1, ... (default cpu; "
                        "a run may be resumed on another device)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<optimizer>-<timestamp>)")
    g.add_argument("--resume", metavar="RUN", default=None,
                   help="continue the run in folder RUN (only --steps, --time-budget, --eval-every, "
                        "--checkpoint-every, --eval-chunk, --device may change)")
    g.add_argument("--eval-every", type=_positive_int, default=None,
                   help="evaluate on the whole training set every N updates; 0: only at the end (default 25)")
    g.add_argument("--eval-chunk", type=_positive_int, default=None, help="examples per evaluation pass (default 5000)")
    g.add_argument("--no-eval-averaged", dest="eval_averaged", action="store_false", default=None,
                   help="skip the evaluation of the Polyak-averaged parameters")
    g.add_argument("--checkpoint-every", type=_positive_int, default=None, help="checkpoint period in updates (default 100)")
    g.add_argument("--data-opt", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="option of gnopt.data.load_dataset, e.g. --data-opt download=true or normalize=unit")
    g.add_argument("--no-plot", action="store_true", help="do not write objective.png")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(_run=_cmd_train)

    # grid -------------------------------------------------------------------------------
    p = sub.add_parser("grid", help="first-order grid search (footnote 10), resumable", formatter_class=_Formatter,
                       description=(
                           "The grid search of the paper's footnote 10: learning rates 2^-6 ... 2^-13 and decay "
                           "periods of 100%%, 50%%, 25%%, 12.5%%, 6.25%% of the number of updates (halving the "
                           "learning rate every period). Each cell is a run folder under --out; finished cells are "
                           "skipped, so rerunning continues an interrupted search. Prints a table of the final "
                           "training objective per cell with the best marked *, and writes grid.json/txt/png."))
    p.add_argument("--methods", default="adam",
                   help="comma-separated subset of adam,sgd,momentum,nesterov, or 'all'")
    p.add_argument("--lr-exponents", type=_exponents, default=tuple(range(6, 14)),
                   help="learning rates 2^-e: LO:HI (inclusive) or a comma list")
    p.add_argument("--decay-fractions", type=_float_list, default=(1.0, 0.5, 0.25, 0.125, 0.0625),
                   help="decay periods as fractions of --steps")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="updates per cell (default: the paper's 40,000; 160,000 on FACES)")
    p.add_argument("--batch-size", type=_positive_int, default=1000, help="minibatch size")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--weight-decay", type=float, default=1e-5, help="L2 weight eta")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--eval-every", type=_positive_int, default=0, help="full-set evaluation period (0: end only)")
    p.add_argument("--out", default=None, help="grid folder (default runs/grid-<dataset>)")
    p.add_argument("--summary", action="store_true", help="only print the table of what is done so far")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(_run=_cmd_grid)

    # plot -------------------------------------------------------------------------------
    p = sub.add_parser("plot", help="plot runs: objective per update and per second (Figure 2)",
                       formatter_class=_Formatter,
                       description="Plot one or more run folders (or metrics.jsonl files) on one figure: the "
                                   "objective against updates and against training time, log scale, with a "
                                   "sliding window of 10 as in the paper's Figure 2. Reads JSONL only.")
    p.add_argument("runs", nargs="*", help="run folders or metrics.jsonl files")
    p.add_argument("--grid", default=None, metavar="DIR",
                   help="a 'gnopt grid' folder: add its best cell and the mean of its top --top cells")
    p.add_argument("--top", type=_int_list, default=(10, 20), help="with --grid: sizes of the top-k means")
    p.add_argument("--out", default=None, help="PNG path (default RUN/objective.png for one run, else compare.png)")
    p.add_argument("--metric", default="loss",
                   help="logged key: loss (minibatch objective), train_objective, train_sq_error, ...")
    p.add_argument("--window", type=_positive_int, default=None,
                   help="sliding-window length (default 10 for the per-update 'loss', 1 for the periodic "
                        "full-training-set evaluations, where a window would average over many updates)")
    p.add_argument("--x", choices=("both", "updates", "time"), default="both", help="x axes")
    p.add_argument("--labels", default=None, help="comma-separated legend labels")
    p.add_argument("--title", default=None, help="figure title")
    p.set_defaults(_run=_cmd_plot)

    # align ------------------------------------------------------------------------------
    p = sub.add_parser("align", help="alignment of KFRA/KFAC updates with GN updates (Figures 5-7)",
                       formatter_class=_Formatter,
                       description="Along a KFRA* trajectory, the cosine similarity of the KFRA and KFAC updates "
                                   "(with and without the approximate inversion of eq. 36) with the block-diagonal "
                                   "GN update per layer and with the full GN update (both by conjugate gradients "
                                   "with the R-operator). Writes alignment.jsonl and alignment.png. The default is "
                                   "a small net; --widths 1000,500,250,30 --limit 0 --batch-size 1000 is the paper's setting.")
    _add_data_args(p, limit_help=" (default 5000; 0: all)")
    _add_model_args(p, widths_default="64,32,16,8")
    p.add_argument("--batch-size", type=_positive_int, default=500, help="minibatch size (the paper: 1000)")
    p.add_argument("--steps", type=_positive_int, default=40, help="KFRA* updates along the trajectory")
    p.add_argument("--every", type=_positive_int, default=10, help="measure every N updates")
    p.add_argument("--methods", default="kfra*,kfra,kfac*,kfac",
                   help="comma list of kfra*,kfra,kfac*,kfac,kflr*,kflr ('*': factored damping)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--weight-decay", type=float, default=1e-5, help="L2 weight eta")
    p.add_argument("--curvature-ema", type=float, default=0.0, help="for the trajectory optimiser")
    p.add_argument("--cg-max-iter", type=_positive_int, default=300, help="CG iterations per solve")
    p.add_argument("--cg-tol", type=float, default=1e-6, help="CG relative residual tolerance")
    p.add_argument("--out", default=None, help="output folder (default runs/align-<dataset>-<timestamp>)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.set_defaults(_run=_cmd_align)

    # rank -------------------------------------------------------------------------------
    p = sub.add_parser("rank", help="numerical rank of the mini-batch GN vs its bounds (section 6, App. D)",
                       formatter_class=_Formatter,
                       description="Numerical rank of the dense mini-batch Gauss-Newton matrix, its diagonal "
                                   "blocks and the KFLR/KFAC/KFRA pre-activation factors G per layer, for several "
                                   "batch sizes N, against the bounds rank(H_L)*N and S*N. The default (CURVES "
                                   "pooled to 7x7, a 49-16-8-4-8-16-49 autoencoder) runs in seconds.")
    _add_data_args(p)
    _add_model_args(p, widths_default="16,8,4")
    p.add_argument("--pool", type=_positive_int, default=4, help="average-pool the images by this factor")
    p.add_argument("--batch-sizes", type=_int_list, default=(1, 2, 4, 8, 16, 32, 64), help="batch sizes N")
    p.add_argument("--samples", type=_positive_int, default=1, help="KFAC samples S per example")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--no-blocks", action="store_true", help="skip the dense per-layer GN blocks")
    p.add_argument("--out", default=None, help="output folder (default runs/rank-<dataset>-<timestamp>)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.set_defaults(_run=_cmd_rank)

    # surface ----------------------------------------------------------------------------
    p = sub.add_parser("surface", help="loss surfaces of a two-layer ReLU net (Figure 1)", formatter_class=_Formatter,
                       description="The square loss of a two-layer ReLU net along random directions: (a) two "
                                   "directions in W1, (b) two in W2, (c) W1 and W2 jointly. Also counts discrete "
                                   "local maxima on the grids and checks that the diagonal Hessian blocks are PSD "
                                   "(section 2.2.3, App. E). Writes surface.png/json/npz.")
    p.add_argument("--inputs", type=_positive_int, default=10, help="input dimension")
    p.add_argument("--hidden", type=_positive_int, default=20, help="hidden ReLU units")
    p.add_argument("--outputs", type=_positive_int, default=5, help="output dimension")
    p.add_argument("--n", type=_positive_int, default=100, help="data points")
    p.add_argument("--extent", type=float, default=3.0, help="grid half-width")
    p.add_argument("--resolution", type=_positive_int, default=61, help="grid points per axis")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--hessian-points", type=_positive_int, default=10, help="random points for the Hessian check")
    p.add_argument("--out", default=None, help="output folder (default runs/surface-<timestamp>)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.set_defaults(_run=_cmd_surface)

    for name, sp in sub.choices.items():
        if name != "plot":
            sp.add_argument("--threads", type=_positive_int, default=None,
                            help="torch.set_num_threads (on a busy machine 1 can be much faster)")

    # bench (forwarded) ------------------------------------------------------------------
    sub.add_parser("bench", help="benchmarks (gnopt.bench; see 'gnopt bench --help')", add_help=False)
    return parser


# -- commands --------------------------------------------------------------------------------
def _train_fields(args: argparse.Namespace) -> Dict[str, Any]:
    keys = ("dataset", "optimizer", "steps", "time_budget", "batch_size", "seed", "weight_decay", "curvature_ema",
            "damping", "lr", "decay_period", "widths", "activation", "code_linear", "init", "dtype", "limit",
            "data_dir", "eval_every", "eval_chunk", "eval_averaged", "checkpoint_every", "matmul_precision",
            "device")
    out = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.opt:
        out["opt_options"] = dict(args.opt)
    for k in ("factor_period", "step_size_fraction", "step_guard", "step_size_check"):
        if getattr(args, k, None) is not None:
            value = getattr(args, k)
            off = k in ("step_guard", "step_size_check") and value == 0
            out.setdefault("opt_options", {})[k] = None if off else value
    if args.data_opt:
        out["dataset_opts"] = dict(args.data_opt)
    return out


def train_config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` of a ``gnopt train`` command line (CLI defaults applied)."""
    from .experiments.config import TrainConfig

    fields = _train_fields(args)
    if fields.get("limit") == 0:
        fields.pop("limit")
    return TrainConfig(**fields)


def _report_run(res) -> None:
    last = res.last
    parts = [f"{res.step} updates in {res.time_s:.1f} s of training ({res.reason})"]
    for k in ("train_objective", "train_sq_error", "train_error_rate", "train_objective_avg", "train_sq_error_avg"):
        if last.get(k) is not None:
            parts.append(f"{k} {last[k]:.5g}")
    print("; ".join(parts))
    print(f"results in {res.run_dir}  (config.json, metrics.jsonl, checkpoint.pt"
          + (f", {res.plot.name})" if res.plot else ")"))
    if res.interrupted:
        print(f"interrupted: continue with  gnopt train --resume {res.run_dir}")


def _cmd_train(args: argparse.Namespace) -> int:
    from .distributed import DistributedError, init, launched_by_torchrun, shutdown
    from .experiments.runner import default_run_dir, resume, train

    fields = _train_fields(args)
    common: Dict[str, Any] = dict(progress=not args.quiet, handle_sigint=True, plot=not args.no_plot)
    if args.nproc < 1:
        print(f"gnopt train: --nproc must be >= 1; got {args.nproc}", file=sys.stderr)
        return 2
    comm = None
    if launched_by_torchrun():
        if args.nproc > 1:
            print("gnopt train: under torchrun the number of processes is torchrun's; drop --nproc", file=sys.stderr)
            return 2
        if not args.resume and not args.out:
            print("gnopt train: under torchrun give every rank the same --out RUN", file=sys.stderr)
            return 2
        comm = init()
        common["comm"] = comm
    else:
        common.update(nproc=args.nproc, threads=getattr(args, "threads", None))
    try:
        if args.resume:
            if args.out:
                print("gnopt train: --out and --resume are exclusive", file=sys.stderr)
                return 2
            res = resume(args.resume, fields, **common)
        else:
            cfg = train_config_from_args(args)
            resolved = cfg.resolved()
            out = Path(args.out) if args.out else default_run_dir(resolved)
            if args.steps is None and args.time_budget is None and (comm is None or comm.rank == 0):
                print(f"training {cfg.optimizer} on {cfg.dataset} for at most {resolved.time_budget:g} s of training "
                      f"time ({resolved.steps} updates) into {out}", file=sys.stderr)
            res = train(cfg, out, **common)
    except DistributedError as e:
        print(f"gnopt train: error: {e}", file=sys.stderr)
        return 1
    finally:
        if comm is not None:
            shutdown()
    if comm is None or comm.rank == 0:
        _report_run(res)
    return 130 if res.interrupted else 0


def _cmd_grid(args: argparse.Namespace) -> int:
    from .experiments.config import FIRST_ORDER, PAPER_STEPS, TrainConfig
    from .experiments.grid import GridConfig, format_grid_table, run_grid, summarize_grid

    methods = FIRST_ORDER if args.methods == "all" else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    dataset = args.dataset or "curves"
    steps = args.steps if args.steps is not None else PAPER_STEPS["first"][dataset]
    fields = {k: getattr(args, k) for k in ("widths", "activation", "code_linear", "init", "limit", "data_dir")
              if getattr(args, k) is not None}
    if fields.get("limit") == 0:
        fields.pop("limit")
    base = TrainConfig(dataset=dataset, optimizer=methods[0] if methods else "adam", steps=steps,
                       batch_size=args.batch_size, seed=args.seed, weight_decay=args.weight_decay,
                       eval_every=args.eval_every, eval_averaged=False, **fields)
    grid = GridConfig(base=base, methods=methods, lr_exponents=tuple(args.lr_exponents), decay_fractions=tuple(args.decay_fractions))
    out = Path(args.out) if args.out else Path("runs") / f"grid-{dataset}"
    if args.summary:
        rows = summarize_grid(grid, out)
    else:
        n = len(methods) * len(grid.lr_exponents) * len(grid.decay_fractions)
        print(f"grid search: {n} cells x {steps} updates into {out}", file=sys.stderr)
        try:
            rows = run_grid(grid, out, progress=not args.quiet, plot=not args.no_plot, handle_sigint=True)
        except KeyboardInterrupt:
            rows = summarize_grid(grid, out)
            print(format_grid_table(grid, rows))
            print(f"interrupted: rerun the same command to continue ({out})")
            return 130
    print(format_grid_table(grid, rows))
    print(f"results in {out}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plots import grid_ranking, plot_runs
    from .plots.runs import run_label

    runs = [Path(r) for r in args.runs]
    groups = []
    if not runs and not args.grid:
        print("gnopt plot: give run folders and/or --grid DIR", file=sys.stderr)
        return 2
    if args.grid:
        try:
            ranked = grid_ranking(args.grid)
        except (OSError, ValueError) as e:
            print(f"gnopt plot: {args.grid} is not a finished grid folder ({e})", file=sys.stderr)
            return 2
        if ranked:
            runs.append(ranked[0])
            groups = [(f"top-{k} mean ({Path(args.grid).name})", ranked[:k]) for k in args.top if k > 1]
    for r in runs:
        if not (r / "metrics.jsonl").is_file() and not (r.is_file() and r.suffix == ".jsonl"):
            print(f"gnopt plot: {r} is not a run folder (no metrics.jsonl)", file=sys.stderr)
            return 2
    if args.out:
        out = Path(args.out)
    elif len(runs) == 1 and not args.grid:
        out = (runs[0] if runs[0].is_dir() else runs[0].parent) / "objective.png"
    else:
        out = Path("compare.png")
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if labels is not None:
        if len(labels) != len(args.runs):
            print("gnopt plot: give one label per run", file=sys.stderr)
            return 2
        labels += [run_label(r) for r in runs[len(labels):]]
    window = args.window if args.window is not None else (10 if args.metric == "loss" else 1)
    path = plot_runs(runs, out, metric=args.metric, window=window, labels=labels, title=args.title, x=args.x,
                     groups=groups)
    print(f"wrote {path}")
    return 0


def _cmd_align(args: argparse.Namespace) -> int:
    from .experiments.alignment import AlignConfig, run_alignment

    dataset = args.dataset or "curves"
    kw: Dict[str, Any] = {k: getattr(args, k) for k in ("widths", "activation", "code_linear", "init")
                          if getattr(args, k) is not None}
    if args.limit is not None:
        kw["limit"] = args.limit or None
    cfg = AlignConfig(dataset=dataset, batch_size=args.batch_size, steps=args.steps, every=args.every,
                      methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), seed=args.seed,
                      weight_decay=args.weight_decay, curvature_ema=args.curvature_ema, cg_max_iter=args.cg_max_iter,
                      cg_tol=args.cg_tol, data_dir=args.data_dir, **kw)
    out = Path(args.out) if args.out else Path("runs") / f"align-{dataset}-{_stamp()}"
    run_alignment(cfg, out, plot=not args.no_plot)
    print(f"results in {out}  (alignment.jsonl" + ("" if args.no_plot else ", alignment.png") + ")")
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    from .experiments.rank import RankConfig, run_rank

    dataset = args.dataset or "curves"
    kw: Dict[str, Any] = {k: getattr(args, k) for k in ("widths", "activation", "code_linear", "init")
                          if getattr(args, k) is not None}
    cfg = RankConfig(dataset=dataset, pool=args.pool, batch_sizes=tuple(args.batch_sizes), samples=args.samples,
                     seed=args.seed, data_dir=args.data_dir, blocks=not args.no_blocks, **kw)
    out = Path(args.out) if args.out else Path("runs") / f"rank-{dataset}-{_stamp()}"
    result = run_rank(cfg, out, plot=not args.no_plot)
    print(f"{'N':>5} {'rank GN':>8} {'bound':>7}   (P = {result['rows'][0]['params']}, rank H_L = "
          f"{result['rows'][0]['rank_HL']})")
    for r in result["rows"]:
        print(f"{r['N']:>5} {r['rank_gn']:>8} {r['bound_gn']:>7}   KFLR G {r['rank_kflr_G']}  KFAC G {r['rank_kfac_G']}")
    print(f"results in {out}  (rank.json" + ("" if args.no_plot else ", rank.png") + ")")
    return 0


def _cmd_surface(args: argparse.Namespace) -> int:
    from .experiments.surface import SurfaceConfig, run_surface

    cfg = SurfaceConfig(inputs=args.inputs, hidden=args.hidden, outputs=args.outputs, n=args.n, extent=args.extent,
                        resolution=args.resolution, seed=args.seed, hessian_points=args.hessian_points)
    out = Path(args.out) if args.out else Path("runs") / f"surface-{_stamp()}"
    run_surface(cfg, out, plot=not args.no_plot)
    print(f"results in {out}  (surface.json, surface.npz" + ("" if args.no_plot else ", surface.png") + ")")
    return 0


def _cmd_bench(argv: Sequence[str]) -> int:
    import inspect

    from . import bench  # lazily: another engineer's subpackage

    kw = {"prog": "gnopt bench"} if "prog" in inspect.signature(bench.main).parameters else {}
    return int(bench.main(list(argv), **kw) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``gnopt`` script and of ``python -m gnopt``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _cmd_bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args._run(args))
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"gnopt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"gnopt {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
