#!/usr/bin/env python3
"""Peak resident memory of optimiser updates, phase by phase, without the allocator's retention.

`gnopt bench step` reports the peak ΔRSS of a whole measurement, which includes what glibc's
allocator keeps after frees. This script shows where the memory of an update goes:

* it re-executes itself with ``MALLOC_MMAP_THRESHOLD_=65536`` (every allocation above 64 KiB
  is its own mapping and is returned to the system when freed, so RSS follows the live
  tensors);
* a thread samples ``/proc/self/statm`` every 0.2 ms while ``--steps`` updates run on the
  paper's MNIST autoencoder (784-1000-500-250-30-250-500-1000-784, sigmoid, ``bce``, float32,
  random data, one thread);
* ``GaussNewton``'s phases (``timing=True``) are recorded, and the peak above the RSS
  measured before the first update (model and data built) is printed per phase, for
  ordinary updates, refresh updates (factors estimated) and γ-search updates.

    .venv/bin/python scripts/memory_profile.py --optimizer kfra --batch 1000
    .venv/bin/python scripts/memory_profile.py --optimizer adam
    .venv/bin/python scripts/memory_profile.py --optimizer kfra --options '{"factor_period": 1}'
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import threading
import time

ENV = "MALLOC_MMAP_THRESHOLD_"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", default="kfra", help="gnopt.make_optimizer name (kfra, kfac, adam, ...)")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--options", default="{}", help="optimiser options as JSON")
    args = p.parse_args()
    if os.environ.get(ENV) != "65536":  # glibc reads it at start-up: run again with it set
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, **{ENV: "65536"}))

    import torch

    import gnopt.optim.timing as timing
    from gnopt import make_optimizer
    from gnopt.models import autoencoder

    torch.set_num_threads(1)
    events: list = []  # (update, phase, start, stop)
    current = [0]

    @contextlib.contextmanager
    def phase(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            events.append((current[0], name, t0, time.perf_counter()))

    def start(self, name):
        self._started = time.perf_counter()

    def stop(self, name):
        events.append((current[0], name, self._started, time.perf_counter()))

    timing.PhaseTimer.phase, timing.PhaseTimer.start, timing.PhaseTimer.stop = phase, start, stop

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    # Samples go into preallocated arrays whose pages are touched before the baseline is taken:
    # a growing Python list of samples would itself add to the RSS being measured (~100 bytes a
    # sample, 5,000 samples a second: +0.5 MB a second, which inflated this script's peaks
    # before 2026-11-30's third session, more for slower updates).
    import numpy as np

    capacity = 4_000_000  # 13 minutes at 5,000 samples a second; sampling stops when full
    sample_t = np.ones(capacity)
    sample_r = np.ones(capacity, dtype=np.int64)
    count = [0]
    done = threading.Event()

    def sampler():
        while not done.is_set() and count[0] < capacity:
            i = count[0]
            sample_t[i] = time.perf_counter()
            sample_r[i] = rss()
            count[0] = i + 1
            time.sleep(0.0002)

    torch.manual_seed(0)
    model = autoencoder(784)
    x = torch.rand(args.batch, 784)
    opts = json.loads(args.options)
    if args.optimizer not in ("adam", "sgd", "momentum", "nesterov", "hf"):
        opts.setdefault("timing", True)
    opt = make_optimizer(args.optimizer, model, "bce", **opts)
    gc.collect()
    base = rss()
    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    spans = []
    for t in range(1, args.steps + 1):
        current[0] = t
        t0 = time.perf_counter()
        opt.step(x, x)
        spans.append((t, t0, time.perf_counter()))
    done.set()
    thread.join()

    def peak(a: float, b: float) -> float:
        """Peak above the baseline in [a, b], MB; NaN if no sample fell inside (a short phase)."""
        n = count[0]
        sel = sample_r[:n][(sample_t[:n] >= a) & (sample_t[:n] <= b)]
        m = int(sel.max()) if sel.size else None
        return float("nan") if m is None else (m - base) / 2**20

    period = getattr(opt, "factor_period", None)
    t_gamma = getattr(opt, "T_gamma", None)

    def kind(t: int) -> str:
        if t_gamma and t % t_gamma == 0:
            return "γ search"
        if period and (t == 1 or t % period == 0):
            return "refresh"
        return "ordinary"

    print(f"{args.optimizer} {opts}, batch {args.batch}, {args.steps} updates; RSS before the first "
          f"{base / 2**20:.0f} MB; peak above it {peak(-1.0, float('inf')):.1f} MB")
    by_kind: dict = {}
    for t, a, b in spans:
        v = peak(a, b)
        if v == v:
            by_kind[kind(t)] = max(by_kind.get(kind(t), 0.0), v)
    for k, v in sorted(by_kind.items()):
        print(f"  {k:9s} updates: peak +{v:6.1f} MB")
    phases: dict = {}
    for t, name, a, b in events:
        v = peak(a, b)
        if v == v:
            phases[(kind(t), name)] = max(phases.get((kind(t), name), 0.0), v)
    for (k, name), v in sorted(phases.items()):
        if v == v:  # phases too short for a sample are left out
            print(f"  {k:9s} {name:17s} +{v:6.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
