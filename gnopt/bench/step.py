"""``gnopt bench step``: one optimiser update against one Adam update, in the same worker.

For each batch size and each configuration, a fresh worker process builds the paper's MNIST
autoencoder (784-1000-500-250-30-250-500-1000-784, sigmoid, float32, BCE), warms up, then
alternates one measured call with one Adam reference call, so that load drift hits both
alike; the ratio is the median of the pairwise ratios. For a Gauss-Newton configuration a
call is one full cycle of its schedules, lcm(factor_period, T_γ) updates (20 with the
defaults), so that factor refreshes and the greedy γ search (three candidate solves every
T_γ updates) are counted as often as in training; the reference is as many Adam updates.
With ``timing=True`` the per-phase breakdown of the Gauss-Newton steps (forward/backward,
factors, decompositions, preconditioning, GN-vector product, bookkeeping) is averaged over
the measured updates (the warm-up call excluded). Peak memory: see
:mod:`gnopt.bench.measure`. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Sequence

from .factors import PAPER_WIDTHS, TINY_WIDTHS, _setup_on
from .flops import PHASES, update_flops
from .measure import machine_info, peak_memory, run_in_process, run_worker
from .worker import Case

HELP = "one GaussNewton/HessianFree update vs one Adam update (ratio, breakdown, peak memory)"

PAPER = {"factor_period": 1, "step_size_fraction": 1.0}  # Algorithm 1 as written: everything every step
AMORTISED = {"factor_period": 10, "step_size_fraction": 0.25}  # the defaults
CONFIGS: Dict[str, Dict[str, Any]] = {
    "adam": {"name": "adam"},
    "kfra": {"name": "kfra", **PAPER},
    "kfra-chol": {"name": "kfra", **PAPER, "explicit_inverse": False},
    "kfra-f64": {"name": "kfra", **PAPER, "solve_dtype": "float64"},
    "kfra-eigen": {"name": "kfra", **PAPER, "damping": "eigen"},
    "kfra-sub": {"name": "kfra", "factor_period": 1, "step_size_fraction": 0.25},
    "kfac": {"name": "kfac", **PAPER},
    "kflr": {"name": "kflr", **PAPER},
    "kfra-amortised": {"name": "kfra", **AMORTISED},
    "kfra-amortised-5": {"name": "kfra", "factor_period": 5, "step_size_fraction": 0.25},  # the default until 11-29
    "kfra-amortised-chol": {"name": "kfra", **AMORTISED, "explicit_inverse": False},
    "kfra-amortised-inv": {"name": "kfra", "factor_period": 5, "explicit_inverse": True},
    "kfac-amortised": {"name": "kfac", **AMORTISED},
    "kfra-default": {"name": "kfra"},  # GaussNewton's defaults, whatever they are
    "hf": {"name": "hf"},
}
DEFAULT_CONFIGS = "adam,kfra,kfra-eigen,kfac,kflr,kfra-default,hf"


def schedule_cycle(opt) -> int:
    """Updates in one full cycle of a GaussNewton's schedules: lcm(factor_period, T_gamma).

    A measured call is one cycle, so that the refreshes of the factors and the greedy γ
    search (three decompositions, solves and products every T_γ updates) are counted in the
    average exactly as often as they happen in training. 1 for other optimisers.
    """
    import math

    if not hasattr(opt, "T_gamma"):
        return 1
    return math.lcm(int(opt.factor_period), int(opt.T_gamma))


def step_case(widths, act, batch, config, seed=0, max_cycle=10**9, device="cpu") -> Case:
    import torch

    from .. import make_optimizer

    opts = dict(CONFIGS[config])
    name = opts.pop("name")
    model, x, y = _setup_on(widths, act, batch, seed, device)
    ref_model, _, _ = _setup_on(widths, act, batch, seed, device)
    if name in ("kfra", "kflr", "kfac", "block"):
        opts["timing"] = True
    opt = make_optimizer(name, model, "bce", **opts)
    adam = make_optimizer("adam", ref_model, "bce")
    period = cycle if (cycle := schedule_cycle(opt)) <= max_cycle else 1
    info: Dict[str, Any] = {"period": period, "phases": {}, "updates": 0, "rejected": 0, "calls": 0}

    def call():
        info["calls"] += 1
        warm = info["calls"] == 1  # the warm-up call's phases are not averaged
        for _ in range(period):
            st = opt.step(x, y)
            if warm:
                continue
            info["updates"] += 1
            info["rejected"] += int(st.rejected)
            for k, v in st.extra.items():
                if k.startswith("t_"):
                    info["phases"][k] = info["phases"].get(k, 0.0) + v

    def reference():
        for _ in range(period):
            adam.step(x, y)

    torch.manual_seed(seed)
    return Case(call, reference=reference, info=info)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batches", default="250,1000,4000", help="comma-separated batch sizes (default 250,1000,4000)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--repeats", type=int, default=5, help="measured calls after the warm-up (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in every worker")
    p.add_argument("--device", default="cpu",
                   help="torch device of the model, data and optimisers, e.g. cuda (default cpu). On CUDA every "
                        "timed call waits for its kernels and the memory column is the device's peak")
    p.add_argument("--matmul-precision", choices=("highest", "high", "medium"), default=None,
                   help="torch.set_float32_matmul_precision in every worker, for gnopt and Adam alike "
                        "(default: torch's, highest)")
    p.add_argument("--widths", default=None, help="layer widths (default: the paper's MNIST autoencoder)")
    p.add_argument("--width-sweep", default=None, metavar="W1,W2,...",
                   help="also run every config at the first batch size on autoencoders 784-w-w/2-w/4-30-w/4-w/2-w-784 "
                        "for each w (e.g. 250,500,1000,2000,4000)")
    p.add_argument("--plot", metavar="PNG", default=None, help="write a figure: per-phase breakdown, time vs batch and width")
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny widths, batch 16, 1 repeat")
    p.add_argument("--budget", type=float, default=120.0, help="seconds per measurement before no new call starts")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before a worker is killed")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--in-process", action="store_true", help="no subprocesses (smoke tests)")


def sweep_widths(w: int) -> List[int]:
    """The paper's autoencoder shape scaled so that the widest hidden layer is ``w``."""
    return [784, w, max(1, w // 2), max(1, w // 4), 30, max(1, w // 4), max(1, w // 2), w, 784]


def add_flops(row: Dict[str, Any], widths: Sequence[int], batch: int, opts: Dict[str, Any]) -> None:
    """Attach the analytic FLOP per update and phase (:mod:`gnopt.bench.flops`) and the rates."""
    fl = update_flops(widths, batch, opts, diagonal_top=True)  # the benchmark's loss is bce
    row["gflop_per_update"] = {k: v / 1e9 for k, v in fl.items()}
    ph = row.get("phases_per_update") or {}
    row["gflops_rate"] = {k: (fl[k] / 1e9 / ph["t_" + k]) if ph.get("t_" + k) else None for k in fl}
    if opts.get("name") in ("adam", "hf") and row.get("adam_s"):
        row["gflops_rate"]["forward_backward"] = fl["forward_backward"] / 1e9 / row["adam_s"]


def hidden_width(r: Dict[str, Any]) -> int:
    """The widest hidden layer of a result row's net."""
    w = r.get("widths") or [0]
    return max(w[1:-1]) if len(w) > 2 else max(w)


def _key(r: Dict[str, Any]):
    return (tuple(r.get("widths") or ()), r["batch"])


def add_memory_ratios(rows: List[Dict[str, Any]]) -> None:
    """Each row's ``memory_ratio``: its :func:`peak_memory` over the ``adam`` row's of the same
    net and batch."""
    adam_mem = {_key(r): peak_memory(r) for r in rows if r["config"] == "adam"}
    for r in rows:
        am, m = adam_mem.get(_key(r)), peak_memory(r)
        r["memory_ratio"] = m / am if (am and m is not None and am > 0) else None


def format_table(rows: List[Dict[str, Any]]) -> str:
    phases = ["t_forward_backward", "t_factors", "t_decompose", "t_precondition", "t_gvp", "t_bookkeeping"]
    on_device = any(r.get("peak_device_mb") is not None for r in rows)
    mem = "peak device memory (MB) | × Adam memory" if on_device else "peak ΔRSS (MB) | × Adam ΔRSS"
    head = (f"| config | widths | batch | update (s) | Adam update (s) | × Adam | {mem} | "
            + " | ".join(p[2:] for p in phases) + " |")
    lines = [head, "|" + "---|" * (8 + len(phases))]
    fmt = lambda v, s: "—" if v is None else format(v, s)  # noqa: E731
    for r in rows:
        m = peak_memory(r)
        ph = r.get("phases_per_update") or {}
        cells = " | ".join("—" if p not in ph else f"{ph[p]:.3f}" for p in phases)
        ws = f"{hidden_width(r)}-wide"
        lines.append(f"| {r['config']} | {ws} | {r['batch']} | {fmt(r['update_s'], '.3f')} | {fmt(r['adam_s'], '.3f')} "
                     f"| {fmt(r['ratio'], '.2f')} | {fmt(m, '.0f')} | {fmt(r.get('memory_ratio'), '.2f')} | {cells} |")
    lines += ["", "GFLOP per update and phase (analytic, gnopt.bench.flops) / GFLOP/s reached:", "",
              "| config | widths | batch | " + " | ".join(PHASES) + " | total GFLOP |", "|" + "---|" * (4 + len(PHASES))]
    for r in rows:
        g, rate = r.get("gflop_per_update") or {}, r.get("gflops_rate") or {}
        cells = " | ".join("—" if p not in g else f"{g[p]:.2f} / {fmt(rate.get(p), '.0f')}" for p in PHASES)
        lines.append(f"| {r['config']} | {hidden_width(r)}-wide | {r['batch']} | {cells} | {sum(g.values()):.1f} |")
    return "\n".join(lines)


def _measure(args, widths, batch, config, repeats) -> Dict[str, Any]:
    print(f"{config} widths {'-'.join(map(str, widths))} batch {batch} ...", file=sys.stderr, flush=True)
    params = {"widths": list(widths), "act": "sigmoid", "batch": batch, "config": config, "device": args.device}
    if args.tiny:
        params["max_cycle"] = 5  # smoke tests: a few updates per call
    spec = {"case": f"{__name__}:step_case", "repeats": repeats, "budget_s": args.budget, "params": params,
            "matmul_precision": args.matmul_precision, "device": args.device}
    res = (run_in_process(spec, args.threads) if args.in_process
           else run_worker(spec, args.timeout, None, args.threads))
    d = res.data
    info = d.get("info") or {}
    period = max(1, int(info.get("period", 1)))
    n_upd = max(1, int(info.get("updates", 1)))
    ref = d.get("reference") or {}
    row = {
        "config": config, "batch": batch, "widths": list(widths), "status": res.status, "message": res.message,
        "update_s": None if d.get("median_s") is None else d["median_s"] / period,
        "adam_s": None if ref.get("median_s") is None else ref["median_s"] / period,
        "ratio": d.get("ratio"), "device": args.device,
        "peak_rss_mb": d.get("peak_rss_mb"), "peak_device_mb": d.get("peak_device_mb"),
        "rejected": info.get("rejected"),
        "phases_per_update": {k: v / n_upd for k, v in (info.get("phases") or {}).items()},
    }
    add_flops(row, widths, batch, CONFIGS[config])
    return row


def run(args: argparse.Namespace) -> int:
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise SystemExit(f"unknown configs {bad}; choose from {','.join(CONFIGS)}")
    widths = [int(w) for w in args.widths.split(",")] if args.widths else (TINY_WIDTHS if args.tiny else PAPER_WIDTHS)
    batches = [16] if args.tiny else [int(b) for b in args.batches.split(",")]
    repeats = 1 if args.tiny else args.repeats
    rows: List[Dict[str, Any]] = []
    for batch in batches:
        for config in configs:
            rows.append(_measure(args, widths, batch, config, repeats))
    if args.width_sweep:
        for w in [int(v) for v in args.width_sweep.split(",")]:
            for config in configs:
                rows.append(dict(_measure(args, sweep_widths(w), batches[0], config, repeats), sweep=True))
    add_memory_ratios(rows)
    table = format_table(rows)
    machine = machine_info(args.threads, args.device)
    machine["matmul_precision"] = args.matmul_precision or "highest"
    where = machine.get("device_name") or machine["cpu_model"]
    mem = "peak device memory" if machine.get("device_name") else "peak ΔRSS"
    print(f"# gnopt bench step: widths {'-'.join(map(str, widths))}, sigmoid, bce, float32 "
          f"(matmul precision {machine['matmul_precision']}), torch {machine['torch']}, "
          f"{machine['torch_threads']} threads, {where} ({args.device}; memory column: {mem})")
    print(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"subcommand": "step", "machine": machine, "results": rows}, f, indent=1)
    if args.plot:
        from ..experiments.metrics import optional_plot

        optional_plot("plot_bench_step", rows, args.plot, stream=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in rows) else 1
