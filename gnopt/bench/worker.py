"""The child side of a measurement: ``python -m gnopt.bench.worker '<json spec>'``.

The spec names a case factory ``"module:function"`` and its ``params``. The factory builds
everything (model, data, imports) and returns a :class:`Case`. The worker then

1. reads the baseline peak RSS (:func:`gnopt.bench.measure.peak_rss_bytes`);
2. times the warm-up call of ``case.call`` and, unless it already took ``budget_s``, the
   first timed call ``m1``;
3. reads the peak RSS again: the difference is the reported peak memory, of the case's own
   calls only;
4. if the case has a ``reference`` (one forward+backward pass): times its warm-up, then
   ``r1``, then alternates ``m2 r2 m3 r3 ...`` up to ``repeats`` pairs (or until the
   budget is spent), so that a change of machine load hits both alike. The ratio is the
   median over pairs of ``m_i / r_i``. A call slower than the budget is made once and
   compared with the median of ``repeats`` reference calls;
5. without a reference, times ``case.call`` up to ``repeats`` times in all;

and writes a JSON object to ``spec["out"]``.

On a CUDA device (``spec["device"]``, e.g. ``"cuda"``) every timed call ends with
``torch.cuda.synchronize`` (kernels run asynchronously: the time is the device's, not the
launches'), and the peak memory is the device's: ``torch.cuda.max_memory_allocated`` during
the warm-up call (a full schedule cycle: it includes the optimiser state's creation, a
factor refresh and a γ search) minus what was allocated before it (``peak_device_mb``);
``peak_rss_mb`` is still the host's.
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from .measure import MB, current_rss_bytes, median, peak_rss_bytes


@dataclass
class Case:
    """A prepared measurement: ``call()`` is timed; ``reference()`` (optional) is the yardstick."""

    call: Callable[[], Any]
    reference: Optional[Callable[[], Any]] = None
    info: Dict[str, Any] = field(default_factory=dict)


def load_factory(name: str) -> Callable[..., Case]:
    module, _, func = name.partition(":")
    return getattr(importlib.import_module(module), func)


def _timed(fn: Callable[[], Any], sync: Optional[Callable[[], None]] = None) -> float:
    t0 = time.perf_counter()
    out = fn()
    if sync is not None:
        sync()
    dt = time.perf_counter() - t0
    del out
    return dt


def device_sync(device: Optional[str]) -> Optional[Callable[[], None]]:
    """``torch.cuda.synchronize`` for a CUDA device (a timed call waits for its kernels), else None."""
    import torch

    if device is None or torch.device(device).type != "cuda":
        return None
    dev = torch.device(device)
    return lambda: torch.cuda.synchronize(dev)


def run_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Measure one case; see the module docstring for the schedule. ``spec["matmul_precision"]``
    (optional): :func:`torch.set_float32_matmul_precision` while the case is built and measured,
    restored afterwards (in-process runs)."""
    from ..numerics import matmul_precision

    with matmul_precision(spec.get("matmul_precision")):
        return _run_spec(spec)


def _run_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    case = load_factory(spec["case"])(**spec.get("params", {}))
    repeats = int(spec.get("repeats", 5))
    budget = spec.get("budget_s")
    sync = device_sync(spec.get("device"))
    base_peak = peak_rss_bytes()
    base_rss = current_rss_bytes()

    def over_budget(spent: float) -> bool:
        return budget is not None and spent >= budget

    base_device = None
    if sync is not None:
        sync()
        dev = torch.device(spec["device"])
        torch.cuda.reset_peak_memory_stats(dev)
        base_device = torch.cuda.memory_allocated(dev)
    warmup = _timed(case.call, sync)
    peak_device = None if base_device is None else torch.cuda.max_memory_allocated(dev) - base_device
    spent = warmup
    times: List[float] = []
    if repeats >= 1 and not over_budget(spent):
        times.append(_timed(case.call, sync))
        spent += times[-1]
    peak = peak_rss_bytes()  # the case's calls only: nothing else has run since the baseline
    result: Dict[str, Any] = {
        "device": spec.get("device") or "cpu",
        "peak_device_mb": None if peak_device is None else peak_device / MB,
        "warmup_s": warmup,
        "baseline_peak_rss_mb": base_peak / MB,
        "baseline_rss_mb": base_rss / MB if base_rss is not None else None,
        "peak_rss_mb": (peak - base_peak) / MB,
        "threads": torch.get_num_threads(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "info": case.info,
    }
    if case.reference is None:
        while len(times) < repeats and not over_budget(spent):
            times.append(_timed(case.call, sync))
            spent += times[-1]
    else:
        ref_warmup = _timed(case.reference, sync)
        ref_times: List[float] = []
        if times:  # interleave: m1 r1 m2 r2 ... so that load drift hits both alike
            ref_times.append(_timed(case.reference, sync))
            while len(times) < repeats and not over_budget(spent):
                times.append(_timed(case.call, sync))
                spent += times[-1]
                ref_times.append(_timed(case.reference, sync))
            ratios = [m / r for m, r in zip(times, ref_times)]
        else:  # a single (slow) call: compare with the reference's median
            while len(ref_times) < max(1, repeats):
                ref_times.append(_timed(case.reference, sync))
            ratios = [warmup / statistics.median(ref_times)]
        result["reference"] = {"warmup_s": ref_warmup, "times_s": ref_times, "median_s": statistics.median(ref_times)}
        result["ratios"] = ratios
        result["ratio"] = statistics.median(ratios)
    result["times_s"] = times
    result["median_s"] = median(times, warmup)
    return result


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    result = run_spec(spec)
    with open(spec["out"], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
