"""A tiny progress bar on stderr: step, loss and steps per second (no dependencies)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Redraws one line (``\\r``) on a terminal at most every ``interval`` seconds; on a
    non-terminal stream (a log file, a pipe) prints a full line every ``log_interval`` s."""

    def __init__(self, total: int, stream: Optional[TextIO] = None, width: int = 24, interval: float = 0.2,
                 log_interval: float = 10.0, enabled: bool = True, time_budget: Optional[float] = None) -> None:
        self.total = max(int(total), 1)
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.time_budget = time_budget
        self._last = -float("inf")
        self._drawn = False

    def update(self, step: int, loss: Optional[float], rate: Optional[float], elapsed: float = 0.0,
               force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        frac = min(step / self.total, 1.0)
        if self.time_budget:
            frac = max(frac, min(elapsed / self.time_budget, 1.0))
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        loss_s = "nan" if loss is None else f"{loss:.4g}"
        rate_s = "?" if not rate else f"{rate:.2f}"
        text = f"[{bar}] {step}/{self.total} loss {loss_s} {rate_s} steps/s {elapsed:.0f}s"
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False
