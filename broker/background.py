"""Periodic work on the broker's event loop: the host monitor, the pool manager, session limits.

Each is level-triggered: a pass looks at the current state and acts on it, so a pass that fails
(a database hiccup, a host that hangs) is logged and the next one simply looks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from typing import Protocol

log = logging.getLogger(__name__)


class Gate(Protocol):
    """Says whether this broker may run a job now (broker/leases.py: it holds the job's lease)."""

    def holds(self, name: str) -> bool: ...


class PeriodicTask(ABC):
    """Runs `run_once()` every `interval_s`, or at once after `kick()`, until `stop()`.

    With a `gate`, a pass runs only while the gate holds the task's `name`: of several brokers on one
    database, only the one holding the job's lease acts.
    """

    name = "periodic-task"
    gate: Gate | None = None

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

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
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                if self.gate is None or self.gate.holds(self.name):
                    await self.run_once()
            except Exception:
                log.exception("%s: pass failed; the next pass looks afresh", self.name)
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as the event is
            # set (a lease keeper's kick at the moment the broker stops), and the task then ran on and
            # stop() waited for it forever (test brokers' teardowns overran). asyncio.timeout turns only
            # its own expiry into TimeoutError; the _stopping flag ends the loop whatever happens.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
