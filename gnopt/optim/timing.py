"""Wall-clock breakdown of an optimiser step (opt-in: ``timing=True``)."""

from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator, Optional

import torch


class PhaseTimer:
    """Accumulates seconds per phase. Disabled it costs nothing; enabled on CUDA it
    synchronises the device at each phase boundary (a documented host synchronisation:
    without it, asynchronous kernels would be billed to the wrong phase)."""

    def __init__(self, enabled: bool, device: Optional[torch.device] = None) -> None:
        self.enabled = enabled
        self.device = device
        self.times: Dict[str, float] = {}

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self, name: str) -> None:
        if self.enabled:
            self._sync()
            self._t0 = time.perf_counter()

    def stop(self, name: str) -> None:
        if self.enabled:
            self._sync()
            self.times["t_" + name] = self.times.get("t_" + name, 0.0) + time.perf_counter() - self._t0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.times["t_" + name] = self.times.get("t_" + name, 0.0) + time.perf_counter() - t0
