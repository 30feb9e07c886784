"""Progress of a long job: a bar with rate and ETA on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Counts ``done`` of ``total`` units; ``advance`` redraws at most every ``every`` s."""

    def __init__(
        self,
        total: int,
        unit: str = "records",
        out: TextIO | None = None,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.unit = total, unit
        self.resumed = 0
        """Units done before this process started (not counted in the rate)."""
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.every = every if every is not None else (0.2 if self.tty else 10.0)
        self.clock = clock
        self.started = clock()
        self.done = 0
        self._last = 0.0

    def skip(self, n: int) -> None:
        """Count ``n`` units done by an earlier or another process."""
        self.done += n
        self.resumed += n

    def advance(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            self.show()

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = (self.done - self.resumed) / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%) "
            f"{rate:,.0f} {self.unit}/s, ETA {_clock(left)}"
        )

    def show(self) -> None:
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total) if self.total else width
            bar = "#" * filled + "-" * (width - filled)
            self.out.write(f"\r[{bar}] {self.line()}   ")
        else:
            self.out.write(f"progress: {self.line()}\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()
