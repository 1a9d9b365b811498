"""Periodic work on the broker's event loop: the host monitor, the pool manager, session limits.

Each is level-triggered: a pass looks at the current state and acts on it, so a pass that fails
(a database hiccup, a host that hangs) is logged and the next one simply looks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

log = logging.getLogger(__name__)


class PeriodicTask(ABC):
    """Runs `run_once()` every `interval_s`, or at once after `kick()`, until `stop()`."""

    name = "periodic-task"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    @abstractmethod
    async def run_once(self) -> object:
        """One pass over the current state."""

    @property
    def wanted(self) -> bool:
        """Whether the configuration gives this task anything to do; the broker starts only those."""
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def kick(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_once()
            except Exception:
                log.exception("%s: pass failed; the next pass looks afresh", self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
