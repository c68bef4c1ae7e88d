"""The child side of a measurement: ``python -m gnopt.bench.worker '<json spec>'``.

The spec names a case factory ``"module:function"`` and its ``params``. The factory builds
everything (model, data, imports) and returns a :class:`Case`. The worker then

1. reads the baseline peak RSS (:func:`gnopt.bench.measure.peak_rss_bytes`);
2. times the warm-up call and up to ``repeats`` calls of ``case.call`` (within ``budget_s``);
3. reads the peak RSS again: the difference is the reported peak memory;
4. if the case has a ``reference`` (one forward+backward pass), times it the same way,
   after the peak was read, so the reference cannot inflate the peak;

and writes a JSON object to ``spec["out"]``.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from .measure import MB, current_rss_bytes, median, peak_rss_bytes, time_calls


@dataclass
class Case:
    """A prepared measurement: ``call()`` is timed; ``reference()`` (optional) is the yardstick."""

    call: Callable[[], Any]
    reference: Optional[Callable[[], Any]] = None
    info: Dict[str, Any] = field(default_factory=dict)


def load_factory(name: str) -> Callable[..., Case]:
    module, _, func = name.partition(":")
    return getattr(importlib.import_module(module), func)


def run_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    case = load_factory(spec["case"])(**spec.get("params", {}))
    base_peak = peak_rss_bytes()
    base_rss = current_rss_bytes()
    repeats = int(spec.get("repeats", 5))
    budget = spec.get("budget_s")
    warmup, times = time_calls(case.call, repeats, budget)
    peak = peak_rss_bytes()
    result: Dict[str, Any] = {
        "warmup_s": warmup,
        "times_s": times,
        "median_s": median(times, warmup),
        "peak_rss_mb": (peak - base_peak) / MB,
        "baseline_peak_rss_mb": base_peak / MB,
        "baseline_rss_mb": base_rss / MB if base_rss is not None else None,
        "threads": torch.get_num_threads(),
        "info": case.info,
    }
    if case.reference is not None:
        ref_warm, ref_times = time_calls(case.reference, max(1, repeats), None)
        result["reference"] = {"warmup_s": ref_warm, "times_s": ref_times, "median_s": median(ref_times, ref_warm)}
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
