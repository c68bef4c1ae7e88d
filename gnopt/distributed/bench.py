"""Steps per second and communication per step of data-parallel gnopt (1 and N processes).

    python -m gnopt.distributed.bench --configs 1x1 1x2 2x1 --curvature kfra kflr kfac hf \
        --widths 1000,500,250,30 --batch 1000 --steps 4

Each configuration runs in fresh processes (:func:`gnopt.distributed.launch`, gloo on
loopback): the paper's autoencoder ``784-w1-…-wk-…-w1-784`` (float32, logistic units,
``bce``) on a fixed synthetic global batch (uniform pixels; the data do not change the
cost), one warm-up step, then ``--steps`` timed steps. The communicator's counters give
the payload bytes and the number of collectives per step. ``--configs PxT``: P processes
with T torch threads each.
Prints a Markdown table, one row per (curvature, work sharing, nproc).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import List, Optional, Sequence

import torch

from .comm import Communicator
from .launch import launch, local_batch


def _worker(comm: Communicator, curvature: str, widths: Sequence[int], batch: int, steps: int, work_sharing: bool,
            damping: str) -> dict:
    import gnopt
    from gnopt.models import autoencoder

    model = autoencoder(784, widths=tuple(widths))
    opts = {} if curvature == "hf" else {"work_sharing": work_sharing, "damping": damping}
    opt = gnopt.make_optimizer(curvature, model, "bce", distributed=comm,
                               weight_decay=1e-5, **opts)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 784, generator=g)
    xs, ys = local_batch(x, x, comm)
    opt.step(xs, ys)  # warm-up (and the first factors)
    s0 = opt.comm.stats.snapshot()
    t0 = time.perf_counter()
    rejected = 0
    for _ in range(steps):
        rejected += int(opt.step(xs, ys).rejected)
    dt = time.perf_counter() - t0
    s1 = opt.comm.stats.snapshot()
    return {"seconds": dt, "steps": steps, "rejected": rejected,
            "bytes": (s1["all_reduce_bytes"] - s0["all_reduce_bytes"] + s1["broadcast_bytes"]
                      - s0["broadcast_bytes"]) / steps,
            "calls": (s1["calls"] - s0["calls"]) / steps, "comm_s": (s1["seconds"] - s0["seconds"]) / steps,
            "rank": comm.rank}


def _bandwidth_worker(comm: Communicator, sizes_mb: Sequence[float], repeats: int) -> List[float]:
    out = []
    for mb in sizes_mb:
        t = torch.ones(max(1, int(mb * 1e6 / 4)))
        comm.all_reduce_sum(t)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            comm.all_reduce_sum(t)
        out.append((time.perf_counter() - t0) / repeats)
    return out


def bandwidth(nproc: int, sizes_mb: Sequence[float] = (0.0, 1.0, 10.0, 50.0), repeats: int = 5) -> None:
    """Seconds per all-reduce of float32 payloads on this machine (gloo, loopback)."""
    res = launch(_bandwidth_worker, nproc, (tuple(sizes_mb), repeats), threads=1, timeout_s=600)
    print(f"| payload MB | all-reduce ms ({nproc} processes) |\n|---|---|")
    for mb, s in zip(sizes_mb, res[0]):
        print(f"| {mb:g} | {1e3 * s:.1f} |")


def run(configs: Sequence[str], curvatures: Sequence[str], widths: Sequence[int], batch: int, steps: int,
        sharing: Sequence[bool], damping: str) -> List[dict]:
    rows = []
    for curv in curvatures:
        ws_list = list(sharing) if curv != "hf" else [False]
        for ws in ws_list:
            for conf in configs:
                n, th = (int(v) for v in conf.split("x"))
                if n == 1 and ws != ws_list[0]:
                    continue  # nothing to share
                if n == 1:
                    torch.set_num_threads(th)
                res = launch(_worker, n, (curv, widths, batch, steps, ws, damping), threads=th, timeout_s=600)
                slowest = max(r["seconds"] for r in res)
                rows.append({"curvature": curv, "work_sharing": ws if n > 1 else None, "nproc": n, "threads": th,
                             "steps_per_s": steps / slowest, "s_per_step": slowest / steps,
                             "MB_per_step": res[0]["bytes"] / 1e6, "collectives_per_step": res[0]["calls"],
                             "comm_s": min(r["comm_s"] for r in res),
                             "rejected": res[0]["rejected"]})
                print(_row(rows[-1]), flush=True)
    return rows


HEADER = ("| curvature | nproc × threads | work sharing | s/step | steps/s | payload MB/step/rank | collectives/step "
          "| s/step in collectives (least-waiting rank) |\n|---|---|---|---|---|---|---|---|")


def _row(r: dict) -> str:
    ws = "–" if r["work_sharing"] is None else ("on" if r["work_sharing"] else "off")
    return (f"| {r['curvature']} | {r['nproc']} × {r['threads']} | {ws} | {r['s_per_step']:.2f} | "
            f"{r['steps_per_s']:.2f} | {r['MB_per_step']:.2f} | {r['collectives_per_step']:.1f} | "
            f"{r['comm_s']:.2f} |")


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m gnopt.distributed.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["1x1", "1x2", "2x1"], help="PxT: P processes, T threads each")
    p.add_argument("--curvature", nargs="+", default=["kfra", "kflr", "kfac", "hf"])
    p.add_argument("--widths", default="1000,500,250,30")
    p.add_argument("--batch", type=int, default=1000, help="global minibatch")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--damping", default="factored")
    p.add_argument("--sharing", default="on,off", help="work sharing settings to run: on, off or on,off")
    p.add_argument("--bandwidth", type=int, default=0, metavar="P",
                   help="only time bare all-reduces of 0-50 MB on P processes")
    a = p.parse_args(argv)
    if a.bandwidth:
        bandwidth(a.bandwidth)
        return
    widths = [int(w) for w in a.widths.split(",")]
    sharing = [s == "on" for s in a.sharing.split(",")]
    print(f"784-{'-'.join(map(str, widths))}-...-784, global batch {a.batch}, float32, {a.steps} timed steps, "
          f"{os.cpu_count()} cores, torch {torch.__version__}")
    print(HEADER)
    run(a.configs, a.curvature, widths, a.batch, a.steps, sharing, a.damping)


if __name__ == "__main__":
    main()
