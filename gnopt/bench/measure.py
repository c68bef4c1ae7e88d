"""How the benchmarks measure: wall time, peak memory, fresh subprocesses, the machine.

Time
    ``time.perf_counter`` around each call. The first call is the *warm-up* (allocator
    growth, oneDNN/MKL kernel selection, lazy imports) and is reported on its own; the
    reported time is the median of the following ``repeats`` calls, interleaved with as
    many calls of the reference (one forward+backward pass) when the case has one, so that
    the ratio to the reference is robust to changes of machine load. A call slower than the
    per-measurement budget is made once and that time is reported. A call's result is
    dropped before the next call starts, so two results never coexist.

Peak memory
    Each measurement runs in a fresh Python subprocess (:mod:`gnopt.bench.worker`). After
    the model and the data are built (and all imports done), the worker reads the
    process's high-water mark ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` as the
    baseline; after the warm-up and the repeats it reads it again. The reported peak is
    the difference: the extra resident memory the measured calls needed at their peak,
    including the allocator's and BLAS's own buffers. Because the high-water mark only
    moves up, memory that was already touched before the baseline and freed again is not
    counted twice (it is small here: imports and model creation).

    The parent also samples the child's ``VmRSS`` from ``/proc`` every 50 ms. That sample
    is a cross-check, and a guard: a child whose RSS passes ``mem_limit`` is killed and
    the measurement is recorded as over the limit instead of taking the machine down.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

MB = 2**20


def peak_rss_bytes() -> int:
    """The process's resident-set high-water mark (``ru_maxrss``), in bytes."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024  # bytes on macOS, KiB on Linux


def current_rss_bytes(pid: Optional[int] = None) -> Optional[int]:
    """``VmRSS`` of ``pid`` (default: this process) from ``/proc``, or None off Linux."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_memory(row: Dict[str, Any]) -> Optional[float]:
    """A result row's peak memory (MB): the device's on a GPU (the host's RSS says little
    there), else the peak ΔRSS."""
    return row["peak_device_mb"] if row.get("peak_device_mb") is not None else row.get("peak_rss_mb")


def median(times: List[float], warmup: float) -> float:
    """The median of ``times``; the warm-up time if there are none (a single-call measurement)."""
    return statistics.median(times) if times else warmup


@dataclass
class WorkerResult:
    """What came back from one subprocess measurement."""

    status: str  # "ok", "timeout", "over-memory-limit", "error"
    data: Dict[str, Any]  # the worker's JSON (empty unless status == "ok")
    wall_s: float  # the subprocess's whole life, start-up included
    sampled_peak_rss_mb: Optional[float]  # parent's VmRSS samples (absolute, not a difference)
    message: str = ""


def _src_root() -> str:
    # .../gnopt/bench/measure.py -> the directory holding the gnopt package
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _watch(proc: "subprocess.Popen", t0: float, timeout_s: float,
           mem_limit_bytes: Optional[int]) -> Tuple[int, str]:
    """Poll the child until it exits; kill it past the time or memory limit.

    Returns (sampled peak RSS in bytes, "" or the reason it was killed)."""
    peak = 0
    while proc.poll() is None:
        rss = current_rss_bytes(proc.pid)
        status = ""
        if rss is not None:
            peak = max(peak, rss)
            if mem_limit_bytes is not None and rss > mem_limit_bytes:
                status = "over-memory-limit"
        if not status and time.perf_counter() - t0 > timeout_s:
            status = "timeout"
        if status:
            proc.kill()
            proc.wait()
            return peak, status
        time.sleep(0.05)
    return peak, ""


def run_worker(spec: Dict[str, Any], timeout_s: float, mem_limit_bytes: Optional[int],
               threads: Optional[int] = None) -> WorkerResult:
    """Run ``python -m gnopt.bench.worker`` on ``spec`` in a fresh process and collect its result.

    ``spec["case"]`` names a factory ``"module:function"``; the worker calls it with
    ``spec["params"]`` (see :mod:`gnopt.bench.worker`). The child is killed past
    ``timeout_s`` seconds or past ``mem_limit_bytes`` of resident memory.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = _src_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    with tempfile.TemporaryDirectory(prefix="gnopt-bench-") as tmp:
        out_path = os.path.join(tmp, "result.json")
        err_path = os.path.join(tmp, "stderr.txt")
        spec = dict(spec, out=out_path, threads=threads)
        with open(err_path, "w") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "gnopt.bench.worker", json.dumps(spec)],
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
            peak = 0
            status = ""
            try:
                peak, status = _watch(proc, t0, timeout_s, mem_limit_bytes)
            finally:  # interrupted parent: never leave the child running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            wall = time.perf_counter() - t0
        sampled = peak / MB if peak else None
        if status == "timeout":
            return WorkerResult(status, {}, wall, sampled, f"killed after {timeout_s:.0f} s")
        if status == "over-memory-limit":
            return WorkerResult(status, {}, wall, sampled,
                                f"killed at RSS {peak / 2**30:.1f} GiB > limit {mem_limit_bytes / 2**30:.1f} GiB")
        if proc.returncode != 0 or not os.path.exists(out_path):
            with open(err_path) as f:
                tail = f.read()[-2000:]
            return WorkerResult("error", {}, wall, sampled, f"exit status {proc.returncode}: {tail.strip()}")
        with open(out_path) as f:
            data = json.load(f)
    return WorkerResult("ok", data, wall, sampled)


def run_in_process(spec: Dict[str, Any], threads: Optional[int] = None) -> WorkerResult:
    """Run a measurement spec in this process (no isolation: the peak-memory difference is
    only meaningful for the first measurement of a process). For smoke tests."""
    from .worker import run_spec

    t0 = time.perf_counter()
    try:
        data = run_spec(dict(spec, threads=threads))
    except Exception as e:  # reported as a failed row, like a crashed worker
        return WorkerResult("error", {}, time.perf_counter() - t0, None, f"{type(e).__name__}: {e}")
    return WorkerResult("ok", data, time.perf_counter() - t0, None)


def total_memory_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _lscpu() -> Dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def machine_info(threads: Optional[int] = None, device: Optional[str] = None) -> Dict[str, Any]:
    """CPU model, core count, memory, load, torch and Python versions, threads, date; for a
    CUDA ``device`` also its name, memory and the CUDA version."""
    import torch

    cpu = _lscpu()
    info: Dict[str, Any] = {
        "cpu_model": cpu.get("Model name") or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cores_per_socket": cpu.get("Core(s) per socket"),
        "threads_per_core": cpu.get("Thread(s) per core"),
        "memory_gib": round(total_memory_bytes() / 2**30, 1) if total_memory_bytes() else None,
        "torch": torch.__version__,
        "torch_threads": threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device is not None and torch.device(device).type == "cuda":
        dev = torch.device(device)
        props = torch.cuda.get_device_properties(dev)
        info.update(device=str(dev), device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    try:
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        from importlib.metadata import version

        info["backpack"] = version("backpack-for-pytorch")
    except Exception:  # not installed: the comparison is skipped
        info["backpack"] = None
    return info
