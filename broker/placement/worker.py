"""One placement thread per broker process: decide, then claim, one request at a time.

Placement is short work (a fraction of a millisecond on a thousand hosts, broker/placement/table.py)
followed by a claim that SQLite runs one at a time anyway. Doing both in turn on one thread means:

- no two requests of this process ever race for the same host, so claims are lost only to other
  brokers (or to a host that changed behind the catalog's back);
- a decision is not interrupted by other placement threads: under CPython's GIL a thread that
  releases it (NumPy does, in every array operation) waits for the interpreter's switch interval
  whenever another thread runs Python, which is what made decisions on 50 request threads take
  several milliseconds of wall time for well under one of work;
- the connect flow no longer reads every host row for every desktop: the worker keeps the
  candidates in a HostCatalog, updates the host it claimed, re-reads a host whose claim it lost,
  and re-reads all of them after `max_age_s` or when nothing fits (freed capacity, new hosts).

The claim stays the arbiter (broker/placement/claim.py): it requires the host's generation to be
the one decided on, the host to be up and enabled, and the desktop to still fit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy.orm import Session

from broker.db.models import Desktop
from broker.placement import PlacementDecision, PlacementEngine, PlacementRequest
from broker.placement.claim import ClaimLost, HostCatalog, reserve
from monitoring.metrics import PLACEMENT_RETRIES

log = logging.getLogger("broker.placement")

# Runs first in a claim's transaction; raising there records nothing (a pool's size check, broker/pools.py).
PlacementGuard = Callable[[Session], None]


class NoHostFits(Exception):
    """No host can take the desktop; `decision.reason` says why in words."""

    def __init__(self, decision: PlacementDecision, timings: list[DecisionTiming] | None = None) -> None:
        super().__init__(decision.reason)
        self.decision = decision
        self.timings = timings or []


class ClaimsKeptFailing(Exception):
    """Every attempt's claim was lost to concurrent changes (other brokers, hosts changing state)."""


@dataclass
class Placement:
    desktop: Desktop  # committed, detached from its session
    decision: PlacementDecision
    attempts: int
    timings: list[DecisionTiming]  # one per decision taken (a lost claim means another)


@dataclass(frozen=True)
class DecisionTiming:
    engine_s: float  # the engine's filtering and weighing
    wall_s: float  # the whole decision on the worker thread, catalog included
    cpu_s: float  # this thread's CPU time for it


class PlacementWorker:
    def __init__(
        self,
        database,
        engine: PlacementEngine,
        attempts: int,
        host_names: Callable[[], Iterable[str]] | Iterable[str] | None = None,
        max_age_s: float = 5.0,
    ) -> None:
        self.database = database
        self.engine = engine
        self.attempts = max(attempts, 1)
        self.catalog = HostCatalog(database, host_names, max_age_s=max_age_s)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="placement")

    def invalidate(self) -> None:
        """Hosts were added, removed or changed: read them all again before the next decision."""
        self.catalog.invalidate()

    async def place_async(
        self,
        request: PlacementRequest,
        make_desktop: Callable[[], Desktop],
        guard: PlacementGuard | None = None,
    ) -> Placement:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.place, request, make_desktop, guard)

    def submit(self, request: PlacementRequest, make_desktop: Callable[[], Desktop]):
        """A Future of the placement, for callers on plain threads (the benchmark)."""
        return self._thread.submit(self.place, request, make_desktop)

    def place(
        self,
        request: PlacementRequest,
        make_desktop: Callable[[], Desktop],
        guard: PlacementGuard | None = None,
    ) -> Placement:
        """Decide and claim, up to `attempts` times; runs on the worker thread.

        `guard(db)` runs first in the claim's transaction (a pool's size check, broker/pools.py); what it
        raises rolls the claim back and reaches the caller.
        """
        timings: list[DecisionTiming] = []
        refreshed = False
        for attempt in range(1, self.attempts + 1):
            decision, chosen = self._decide(request, timings)
            if chosen is None and not refreshed:
                # The catalog may be behind: capacity freed or a host added since it was read.
                self.catalog.refresh()
                refreshed = True
                decision, chosen = self._decide(request, timings)
            if chosen is None:
                raise NoHostFits(decision, timings)
            try:
                with self.database.transaction() as db:
                    if guard is not None:
                        guard(db)
                    desktop, after = reserve(db, chosen.name, chosen.generation, request, make_desktop())
            except ClaimLost as lost:
                log.info("%s (attempt %d of %d); placing again", lost, attempt, self.attempts)
                self.catalog.claim_done(chosen.name)
                self.catalog.refresh_after_loss(chosen.name)
                PLACEMENT_RETRIES.inc()
                continue
            except BaseException:
                # Refused by the guard, or the database failed: the host was taken only in our memory.
                self.catalog.claim_done(chosen.name)
                self.catalog.invalidate()
                raise
            self.catalog.claim_done(chosen.name)
            self.catalog.record_claim(after, request)
            return Placement(desktop, decision, attempt, timings)
        raise ClaimsKeptFailing(f"claims lost {self.attempts} times in a row")

    def _decide(self, request: PlacementRequest, timings: list[DecisionTiming]):
        started, cpu_started = time.perf_counter(), time.thread_time()
        decision, chosen = self.catalog.decide(self.engine, request)
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
        timings.append(DecisionTiming(decision.duration_s, wall, cpu))
        return decision, chosen

    def close(self, wait: bool = True) -> None:
        self._thread.shutdown(wait=wait)
