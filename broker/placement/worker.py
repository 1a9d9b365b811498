"""One placement thread per broker process: decide, then claim, the queued requests together.

Placement is short work (a fraction of a millisecond on a thousand hosts, broker/placement/table.py)
followed by a claim in the database. Doing both on one thread means:

- no two requests of this process ever race for the same host, so claims are lost only to other
  brokers (or to a host that changed behind the catalog's back);
- a decision is not interrupted by other placement threads: under CPython's GIL a thread that
  releases it (NumPy does, in every array operation) waits for the interpreter's switch interval
  whenever another thread runs Python, which is what made decisions on 50 request threads take
  several milliseconds of wall time for well under one of work;
- the connect flow no longer reads every host row for every desktop: the worker keeps the
  candidates in a HostCatalog, updates the hosts it claimed, catches up with the hosts other brokers
  claimed (HostCatalog.sync), and re-reads all of them after `max_age_s` or when nothing fits.

The thread takes every request queued (up to MAX_BATCH), decides each in turn (the catalog keeps a host
decided on out of the next decisions until its claim is done) and claims them all in one transaction
(claim.reserve_many: four statements however many requests); the requests whose claims were lost are
decided again and claimed in the next transaction. With two brokers on PostgreSQL, one transaction per
request cost one commit and five round trips per desktop; the batch shares them (docs/placement.md). A
request with a guard (a pool's spare, broker/pools.py) is placed on its own, as its guard may refuse.

The claim stays the arbiter (broker/placement/claim.py): under the host's row lock it requires the host
to be up and enabled, to pass every filter again, to hold no more desktops than the decision counted,
and the desktop to still fit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from broker.db.models import Desktop
from broker.placement import HostCandidate, PlacementDecision, PlacementEngine, PlacementRequest
from broker.placement.claim import ClaimLost, HostCatalog, reserve_many
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


# Most requests one claim transaction takes from the queue (PlacementWorker._run).
MAX_BATCH = 32


@dataclass
class _Job:
    request: PlacementRequest
    make_desktop: Callable[[], Desktop]
    guard: PlacementGuard | None
    future: Future
    timings: list[DecisionTiming] = field(default_factory=list)
    attempt: int = 0
    refreshed: bool = False


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
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="placement", daemon=True)
        self._started = False
        self._start_lock = threading.Lock()

    def invalidate(self) -> None:
        """Hosts were added, removed or changed: read them all again before the next decision."""
        self.catalog.invalidate()

    async def place_async(
        self,
        request: PlacementRequest,
        make_desktop: Callable[[], Desktop],
        guard: PlacementGuard | None = None,
    ) -> Placement:
        return await asyncio.wrap_future(self.submit(request, make_desktop, guard))

    def submit(
        self,
        request: PlacementRequest,
        make_desktop: Callable[[], Desktop],
        guard: PlacementGuard | None = None,
    ) -> Future:
        """A Future of the placement, decided and claimed on the worker's thread."""
        with self._start_lock:
            if not self._started:
                self._thread.start()
                self._started = True
        future: Future = Future()
        self._queue.put(_Job(request, make_desktop, guard, future))
        return future

    def _run(self) -> None:
        """Take what is queued (up to MAX_BATCH requests) and place it: unguarded requests together, with
        one claim transaction per round of decisions; a request with a guard alone (its guard may refuse
        and roll its transaction back)."""
        while (job := self._queue.get()) is not None:
            jobs, stop = [job], False
            while len(jobs) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
            for alone in [job for job in jobs if job.guard is not None]:
                self._settle(
                    alone, lambda alone=alone: self.place(alone.request, alone.make_desktop, alone.guard)
                )
            together = [job for job in jobs if job.guard is None]
            if together:
                try:
                    self._place_together(together)
                except Exception:
                    # The shared transaction failed (the database, or one desktop's row refused): it rolled
                    # back, so each request still open is placed again on its own and fails only for itself.
                    log.info("a placement batch failed; placing its requests one by one", exc_info=True)
                    for open_job in together:
                        if not open_job.future.done():
                            self._finish(open_job)
            if stop:
                break

    @staticmethod
    def _settle(job: _Job, work: Callable[[], Placement]) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(work())
        except BaseException as exc:
            job.future.set_exception(exc)

    def _finish(self, job: _Job) -> None:
        try:
            job.future.set_result(self.place(job.request, job.make_desktop, job.guard))
        except BaseException as exc:
            job.future.set_exception(exc)

    def _place_together(self, jobs: list[_Job]) -> None:
        """Decide for every job, claim all the decisions in one transaction, and go again for the lost ones."""
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        while jobs:
            decided: list[tuple[_Job, PlacementDecision, HostCandidate]] = []
            for job in jobs:
                job.attempt += 1
                decision, chosen = self._decide(job.request, job.timings)
                if chosen is None and not job.refreshed:
                    self.catalog.refresh()
                    job.refreshed = True
                    decision, chosen = self._decide(job.request, job.timings)
                if chosen is None:
                    job.future.set_exception(NoHostFits(decision, job.timings))
                else:
                    decided.append((job, decision, chosen))
            if not decided:
                return
            try:
                with self.database.transaction() as db:
                    claims = [(chosen, job.request, job.make_desktop()) for job, _, chosen in decided]
                    answers = reserve_many(db, claims, self.engine.refusal)
            except BaseException:
                for _, _, chosen in decided:
                    self.catalog.claim_done(chosen.name)
                self.catalog.invalidate()
                raise
            jobs, lost_hosts = [], []
            for (job, decision, chosen), answer in zip(decided, answers, strict=True):
                self.catalog.claim_done(chosen.name)
                if isinstance(answer, ClaimLost):
                    log.info("%s (attempt %d of %d); placing again", answer, job.attempt, self.attempts)
                    PLACEMENT_RETRIES.inc()
                    lost_hosts.append(chosen.name)
                    if job.attempt >= self.attempts:
                        job.future.set_exception(
                            ClaimsKeptFailing(f"claims lost {self.attempts} times in a row")
                        )
                    else:
                        jobs.append(job)
                    continue
                desktop, after = answer
                self.catalog.record_claim(after, job.request)
                job.future.set_result(Placement(desktop, decision, job.attempt, job.timings))
            if lost_hosts:
                # Lost claims mean another broker is placing where this one is: catch up with all it did.
                self.catalog.catch_up(lost_hosts)

    def place(
        self,
        request: PlacementRequest,
        make_desktop: Callable[[], Desktop],
        guard: PlacementGuard | None = None,
    ) -> Placement:
        """Decide and claim one request, up to `attempts` times, on the calling thread.

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
                    (answer,) = reserve_many(db, [(chosen, request, make_desktop())], self.engine.refusal)
                    if isinstance(answer, ClaimLost):
                        raise answer  # rolls back what the guard did
                    desktop, after = answer
            except ClaimLost as lost:
                log.info("%s (attempt %d of %d); placing again", lost, attempt, self.attempts)
                self.catalog.claim_done(chosen.name)
                self.catalog.catch_up([chosen.name])
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
        with self._start_lock:
            started, self._started = self._started, True  # no thread starts after this
        if started and self._thread.is_alive():
            self._queue.put(None)
            if wait:
                self._thread.join()
