"""Benchmarks of gnopt: ``python -m gnopt.bench <subcommand> ...``.

Subcommands live in :data:`SUBCOMMANDS`, a name → module map. A subcommand module provides

* ``HELP``: a one-line description;
* ``add_arguments(parser)``: its ``argparse`` options;
* ``run(args) -> int``: the benchmark itself, returning an exit status.

Every measurement runs in a fresh subprocess (:mod:`gnopt.bench.worker`), so that its
peak memory is its own; see :mod:`gnopt.bench.measure` for how time and memory are taken.
These are benchmarks, not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import ModuleType
from typing import Dict, List, Optional

from . import factors, step

SUBCOMMANDS: Dict[str, ModuleType] = {
    "factors": factors,  # Kronecker factors (KFRA/KFLR/KFAC) vs one forward+backward pass
    "step": step,  # one optimiser update vs one Adam update, with the per-phase breakdown
}


def build_parser(prog: str = "python -m gnopt.bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="gnopt benchmarks (timings and peak memory)")
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    sub.required = True
    for name, module in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None, prog: str = "python -m gnopt.bench") -> int:
    """Run a benchmark subcommand; ``argv`` without the program name (``sys.argv[1:]`` if None)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    # SIGTERM as an exception, so that a killed benchmark still kills its worker subprocess.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args._run(args))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):  # pragma: no cover - exercised by hand
    raise SystemExit(128 + signum)


__all__ = ["main", "build_parser", "SUBCOMMANDS"]
