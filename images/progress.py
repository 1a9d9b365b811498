"""A one-line progress report on stderr for long steps (hashing, copying, debootstrap).

On a terminal it redraws one line in place, with a bar when the size is known ("[#####-----]  50%");
elsewhere (pipes, logs, CI) it prints plain lines: the step once when it starts and once when it ends, so logs
are not flooded with carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_INTERVAL_S = 0.2
BAR_WIDTH = 24


class Progress:
    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0
        if not self.interactive:
            self._write(f"{label} ...\n")

    def advance(self, amount: int) -> None:
        self.done += amount
        now = time.monotonic()
        if self.interactive and now - self._drawn >= REDRAW_INTERVAL_S:
            self._drawn = now
            self._write(f"\r{self._line()}")

    def finish(self) -> None:
        elapsed = time.monotonic() - self._started
        prefix = "\r" if self.interactive else ""
        self._write(f"{prefix}{self._line()} done in {elapsed:.1f} s\n")

    def fail(self, reason: str) -> None:
        """End the line with why the step stopped (instead of "done")."""
        prefix = "\r" if self.interactive else ""
        self._write(f"{prefix}{self.label}: {reason}\n")

    def _line(self) -> str:
        if not self.total:
            return f"{self.label}: {_mib(self.done)}" if self.done else self.label
        percent = min(100, self.done * 100 // self.total)
        sizes = f"{percent:3d}% ({_mib(self.done)} of {_mib(self.total)})"
        if not self.interactive:
            return f"{self.label}: {sizes}"
        return f"{self.label}: {bar(self.done, self.total)} {sizes}"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def bar(done: int, total: int) -> str:
    """`[######------------------]`: the share done of total (an empty bar when total is 0)."""
    filled = min(BAR_WIDTH, done * BAR_WIDTH // total) if total > 0 else 0
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}]"


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
