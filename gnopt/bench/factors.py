"""``python -m gnopt.bench factors``: Kronecker factors vs one forward+backward pass.

Net: the paper's autoencoder 784-1000-500-250-30-250-500-1000-784 (float32), sigmoid (or
tanh) hidden units, a linear code layer and a linear output layer (``mse`` on the output,
``bce`` on logits). Inputs: uniform [0, 1) images, targets = inputs. The yardstick is one
forward+backward pass: ``loss(model(x), y).backward()`` of the batch-mean loss.

Rows (each a fresh subprocess, see :mod:`gnopt.bench.measure`):

``fwd+bwd``
    the yardstick alone, for its absolute time and memory.
gnopt, mode ``factors``
    ``gnopt.kronecker_factors(model, x, y, loss, method)``: the public call, which runs
    its own forward pass (no autograd), then computes every Q and G.
gnopt, mode ``grad+factors``
    what an optimiser step needs: a forward pass recording the trace with autograd,
    ``loss.backward()`` for the gradient, then ``factors_from_trace`` on the detached
    trace. This is the same work as a BackPACK backward pass with its extension.
backpack, mode ``grad+factors``
    ``with backpack(KFRA()/KFLR()/KFAC()): loss(model(x), y).backward()`` on the extended
    model. BackPACK's KFRA does not support BCE, so BackPACK runs ``torch.nn.MSELoss``
    (mean over batch *and* outputs: a constant factor 2/K from gnopt's ``mse``, which does
    not change any cost).

``× fwd+bwd`` compares each row with a forward+backward pass timed in the same subprocess,
interleaved with the row's calls: the median over pairs of (call time / fwd+bwd time), so
that a change of machine load hits both alike (see :mod:`gnopt.bench.worker`). ``added ×
fwd+bwd`` (grad+factors rows) is that ratio minus one: the cost of the factors on top of
the gradient.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from .measure import WorkerResult, machine_info, peak_memory, run_in_process, run_worker, total_memory_bytes
from .worker import Case

HELP = "time KFRA/KFLR/KFAC Kronecker factors against one forward+backward pass (gnopt and BackPACK)"

PAPER_WIDTHS = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
TINY_WIDTHS = [20, 10, 5, 10, 20]
METHODS = ("kfra", "kflr", "kfac")
LOSSES = ("mse", "bce")
MODES = ("factors", "grad+factors")

TIME_METHOD = ("time.perf_counter around each call; first call = warm-up, reported apart; "
               "median of the next `repeats` calls (fewer if the per-measurement budget ran out)")
MEMORY_METHOD = ("fresh subprocess per row; peak = ru_maxrss (RUSAGE_SELF) after the timed calls minus "
                 "ru_maxrss after model/data creation and imports; the parent also samples VmRSS every "
                 "50 ms (absolute) as a cross-check and a kill guard")


# ---------------------------------------------------------------- the net and the data

def autoencoder(widths: Sequence[int], act: str = "sigmoid"):
    """``nn.Sequential`` of ``nn.Linear`` with ``act`` after every layer except the code layer
    (the narrowest inner layer) and the output layer, which are linear."""
    from torch import nn

    acts = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
    if act not in acts:
        raise ValueError(f"unknown activation {act!r}; use one of {sorted(acts)}")
    if len(widths) < 2:
        raise ValueError("need at least an input and an output width")
    inner = list(widths[1:-1])
    code = 1 + inner.index(min(inner)) if inner else None  # index into widths of the code layer's output
    layers: List[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        out_index = i + 1
        if out_index != len(widths) - 1 and out_index != code:
            layers.append(acts[act]())
    return nn.Sequential(*layers)


def _setup(widths, act, batch, seed):
    import torch

    torch.manual_seed(seed)
    model = autoencoder(widths, act)
    x = torch.rand(batch, widths[0])
    y = x.clone() if widths[-1] == widths[0] else torch.rand(batch, widths[-1])
    return model, x, y


def _setup_on(widths, act, batch, seed, device):
    """:func:`_setup` (built on the CPU, so the same on every device), moved to ``device``."""
    model, x, y = _setup(widths, act, batch, seed)
    return model.to(device), x.to(device), y.to(device)


def _fwd_bwd(model, x, y, lossfn):
    def call():
        model.zero_grad(set_to_none=True)
        loss = lossfn(model(x), y)
        loss.backward()
        return loss.detach()

    return call


# ---------------------------------------------------------------- case factories (run in the worker)

def fwd_bwd_case(widths, act, batch, loss, seed=0, device="cpu") -> Case:
    from .. import get_loss

    model, x, y = _setup_on(widths, act, batch, seed, device)
    return Case(_fwd_bwd(model, x, y, get_loss(loss)))


def gnopt_case(widths, act, batch, loss, method, mode, seed=0, chunk_size=None, samples=1, device="cpu") -> Case:
    import torch

    from .. import get_loss, kronecker_factors, parse_model
    from ..curvature import factors_from_trace, forward_trace

    model, x, y = _setup_on(widths, act, batch, seed, device)
    lossfn = get_loss(loss)
    net = parse_model(model)
    gen = torch.Generator(device=device).manual_seed(seed + 1)  # KFAC draws on the device

    if mode == "factors":
        def call():
            return kronecker_factors(model, x, y, lossfn, method, samples=samples, generator=gen,
                                     chunk_size=chunk_size)
    elif mode == "grad+factors":
        def call():
            model.zero_grad(set_to_none=True)
            trace = forward_trace(net, x)
            lossfn(trace.output, y).backward()
            with torch.no_grad():
                return factors_from_trace(net, trace.detached(), y, lossfn, method, samples, gen, chunk_size)
    else:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    return Case(call, reference=_fwd_bwd(model, x, y, lossfn))


def backpack_case(widths, act, batch, method, seed=0, device="cpu") -> Case:
    import copy

    from backpack import backpack, extend
    from backpack.extensions import KFAC, KFLR, KFRA
    from torch import nn

    model, x, y = _setup_on(widths, act, batch, seed, device)
    plain = copy.deepcopy(model)
    model = extend(model)
    lossfn = extend(nn.MSELoss(reduction="mean"))
    ext_cls = {"kfra": KFRA, "kflr": KFLR, "kfac": KFAC}[method]
    params = [p for p in model.parameters()]

    def call():
        model.zero_grad(set_to_none=True)
        with backpack(ext_cls()):
            loss = lossfn(model(x), y)
            loss.backward()
        out = [getattr(p, method) for p in params]
        for p in params:  # do not keep this call's factors alive into the next call
            delattr(p, method)
        return out

    return Case(call, reference=_fwd_bwd(plain, x, y, nn.MSELoss(reduction="mean")))


# ---------------------------------------------------------------- the parent side

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=None, help="batch size (default 1000; 16 with --tiny)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls after the warm-up (default 5; 1 with --tiny)")
    p.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    p.add_argument("--backpack", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure BackPACK's KFRA/KFLR/KFAC extensions on mse (default: on if installed; off with --tiny)")
    p.add_argument("--methods", default="kfra,kflr,kfac", help="comma-separated subset of kfra,kflr,kfac")
    p.add_argument("--losses", default="mse,bce", help="losses for gnopt (BackPACK: mse only)")
    p.add_argument("--modes", default="factors,grad+factors", help="gnopt modes: factors, grad+factors")
    p.add_argument("--threads", type=int, default=None, help="torch threads in every worker (default: torch's default)")
    p.add_argument("--act", default="sigmoid", choices=["sigmoid", "tanh", "relu"], help="hidden transfer function")
    p.add_argument("--tiny", action="store_true", help=f"smoke test: widths {TINY_WIDTHS}, batch 16, 1 repeat, no BackPACK")
    p.add_argument("--widths", default=None, help="comma-separated layer widths (default: the paper's autoencoder)")
    p.add_argument("--chunk-size", type=int, default=None, help="gnopt KFLR/KFAC square-root columns per chunk (default: gnopt's)")
    p.add_argument("--budget", type=float, default=120.0,
                   help="seconds per measurement after which no further call starts (default 120): a call "
                        "slower than this runs once, and that single time is reported")
    p.add_argument("--backpack-kflr-repeats", type=int, default=0,
                   help="timed calls of BackPACK KFLR after its first call (default 0: run it once)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before a worker is killed (default 1800)")
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="kill a worker whose RSS passes this many GiB (default: 85%% of RAM)")
    p.add_argument("--in-process", action="store_true",
                   help="run every measurement in this process (fast, for smoke tests; peak memory is then "
                        "not isolated between rows and only the first rows' numbers mean anything)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="torch device, e.g. cuda (default cpu). On CUDA every timed call waits for its kernels "
                        "and the memory column is the device's peak")


def _split(s: str, allowed: Sequence[str], what: str) -> List[str]:
    items = [t.strip() for t in s.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise SystemExit(f"bad {what} {s!r}: choose from {','.join(allowed)}")
    return items


def _backpack_available() -> bool:
    try:
        import backpack  # noqa: F401
    except ImportError:
        return False
    return True


def _load1() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _row(impl: str, loss: str, method: str, mode: str, res: WorkerResult) -> Dict[str, Any]:
    d = res.data
    row: Dict[str, Any] = {
        "impl": impl, "loss": loss, "method": method, "mode": mode, "status": res.status,
        "message": res.message, "wall_s": res.wall_s, "sampled_peak_rss_mb": res.sampled_peak_rss_mb,
        "warmup_s": d.get("warmup_s"), "times_s": d.get("times_s"), "median_s": d.get("median_s"),
        "repeats_done": len(d.get("times_s") or []), "peak_rss_mb": d.get("peak_rss_mb"),
        "peak_device_mb": d.get("peak_device_mb"),
        "baseline_rss_mb": d.get("baseline_rss_mb"), "threads": d.get("threads"),
        "fwd_bwd_s": None, "ratio_to_fwd_bwd": None, "loadavg_1min": _load1(),
    }
    ref = d.get("reference")
    if ref is not None and d.get("ratio") is not None:
        row["fwd_bwd_s"] = ref["median_s"]
        row["ratio_to_fwd_bwd"] = d["ratio"]
        row["ratios"] = d.get("ratios")
    elif method == "fwd+bwd" and d.get("median_s"):
        row["fwd_bwd_s"] = d["median_s"]
        row["ratio_to_fwd_bwd"] = 1.0
    return row


def _fmt(v: Optional[float], spec: str) -> str:
    return "—" if v is None else format(v, spec)


def format_table(rows: List[Dict[str, Any]]) -> str:
    on_device = any(r.get("peak_device_mb") is not None for r in rows)
    mem = "peak device memory (MB)" if on_device else "peak ΔRSS (MB)"
    head = ("| impl | loss | method | mode | warm-up (s) | median (s) [n] | fwd+bwd (s) | × fwd+bwd "
            f"| added × fwd+bwd | {mem} | load | status |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        added = None
        if r["mode"] == "grad+factors" and r["ratio_to_fwd_bwd"] is not None:
            added = r["ratio_to_fwd_bwd"] - 1.0
        n = r["repeats_done"]
        med = "—" if r["median_s"] is None else f"{r['median_s']:.3f} [{n if n else '1 call'}]"
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['message'][:80]}"
        lines.append(
            f"| {r['impl']} | {r['loss']} | {r['method']} | {r['mode']} | {_fmt(r['warmup_s'], '.3f')} | {med} "
            f"| {_fmt(r['fwd_bwd_s'], '.3f')} | {_fmt(r['ratio_to_fwd_bwd'], '.2f')} | {_fmt(added, '.2f')} "
            f"| {_fmt(peak_memory(r), '.0f')} "
            f"| {_fmt(r.get('loadavg_1min'), '.1f')} | {status} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    methods = _split(args.methods, METHODS, "methods")
    losses = _split(args.losses, LOSSES, "losses")
    modes = _split(args.modes, MODES, "modes")
    if args.widths:
        widths = [int(w) for w in args.widths.split(",")]
    else:
        widths = TINY_WIDTHS if args.tiny else PAPER_WIDTHS
    batch = args.batch or (16 if args.tiny else 1000)
    repeats = args.repeats if args.repeats is not None else (1 if args.tiny else 5)
    use_backpack = args.backpack if args.backpack is not None else (not args.tiny)
    if use_backpack and not _backpack_available():
        print("BackPACK is not installed (pip install --no-deps backpack-for-pytorch==1.7.1 einops unfoldNd "
              "einconv); skipping the comparison", file=sys.stderr)
        use_backpack = False
    total = total_memory_bytes()
    mem_limit = int(args.mem_limit_gb * 2**30) if args.mem_limit_gb else (int(0.85 * total) if total else None)

    machine = machine_info(args.threads, args.device)
    config = {
        "widths": widths, "act": args.act, "batch": batch, "repeats": repeats, "dtype": "float32",
        "methods": methods, "losses": losses, "modes": modes, "backpack": use_backpack, "tiny": args.tiny,
        "threads": args.threads, "chunk_size": args.chunk_size, "budget_s": args.budget,
        "backpack_kflr_repeats": args.backpack_kflr_repeats, "timeout_s": args.timeout,
        "mem_limit_gib": mem_limit / 2**30 if mem_limit else None, "seed": args.seed,
        "kfac_samples": 1, "isolation": "none (in-process)" if args.in_process else "subprocess per row",
        "device": args.device,
    }
    base = {"widths": widths, "act": args.act, "batch": batch, "seed": args.seed, "device": args.device}
    mod = __name__

    plan = []  # (impl, loss, method, mode, case, params, repeats)
    for loss in losses:
        plan.append(("torch", loss, "fwd+bwd", "—", f"{mod}:fwd_bwd_case", dict(base, loss=loss), repeats))
    for loss in losses:
        for method in methods:
            for mode in modes:
                params = dict(base, loss=loss, method=method, mode=mode, chunk_size=args.chunk_size)
                plan.append(("gnopt", loss, method, mode, f"{mod}:gnopt_case", params, repeats))
    if use_backpack:
        for method in methods:
            r = args.backpack_kflr_repeats if method == "kflr" else repeats
            plan.append(("backpack", "mse", method, "grad+factors", f"{mod}:backpack_case", dict(base, method=method), r))

    rows: List[Dict[str, Any]] = []
    for i, (impl, loss, method, mode, case, params, reps) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {impl} {loss} {method} {mode} ...", file=sys.stderr, flush=True)
        spec = {"case": case, "params": params, "repeats": reps, "budget_s": args.budget, "device": args.device}
        res = run_in_process(spec, args.threads) if args.in_process else run_worker(spec, args.timeout, mem_limit, args.threads)
        row = _row(impl, loss, method, mode, res)
        rows.append(row)
        extra = f" {row['median_s']:.3f}s" if row["median_s"] is not None else f" {res.message[:200]}"
        print(f"    {res.status}{extra} (wall {res.wall_s:.1f}s)", file=sys.stderr, flush=True)

    try:
        machine["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    table = format_table(rows)
    print(f"# gnopt bench factors: widths {'-'.join(map(str, widths))}, {args.act}, batch {batch}, float32, "
          f"torch {machine['torch']}, {machine['torch_threads']} threads, "
          f"{machine.get('device_name') or machine['cpu_model']} ({args.device})")
    print(table)
    if args.json:
        out = {"subcommand": "factors", "config": config, "machine": machine, "time_method": TIME_METHOD,
               "memory_method": MEMORY_METHOD, "results": rows}
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if all(r["status"] == "ok" for r in rows if r["impl"] != "backpack") else 1
