"""The pool manager: keeps each pool's prewarmed spares and minimum size.

Level triggered (ARCHITECTURE.md, principle 1): every pass counts what each pool holds in the
database and starts what is missing, so a missed wake-up, a failed start or a broker restart is
repaired by the next pass. Desktops are placed and booted through DesktopService (placement,
claim, provider calls on its executor), never from here directly.

A spare is "ready" once its host's provider says it finished starting (`readiness`; for libvirt, the
ready marker on its serial console, the same one a rollout's canaries must show, broker/rollout.py). Until then it is a booting spare:
connects take ready spares first, and a booting one only when no ready one is left (still sooner
than a cold clone). A spare whose guest crashes while booting is removed and replaced; one still
silent at the pool's `ready_deadline_s` is logged and counted ready, so nothing waits forever on an
image without the marker. Every pass watches the spares not yet ready, so a broker restart resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from broker import errors
from broker.config import PoolSettings
from broker.db.models import Desktop, DesktopSession, Pool, utcnow
from broker.desktops import spare_conditions
from broker.placement.claim import HOLDING_STATES
from broker.pool_images import PoolSizeGuard
from broker.pool_task import PoolTask
from broker.rollout import remove_spare, retire_outdated_spares
from hypervisor.base import Readiness
from monitoring.metrics import (
    DESKTOP_GUEST_READY_DURATION,
    POOL_DESKTOPS,
    SPARES_NOT_READY,
    PoolDesktops,
)

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 10.0
READY_POLL_S = 0.5


@dataclass(frozen=True)
class PoolCounts:
    total: int
    spare: int
    in_use: int
    spare_ready: int = 0

    def missing(self, pool: PoolSettings) -> int:
        """How many spares to start now: enough for `spares` idle and `min_size` in all, within `max_size`."""
        wanted = max(pool.spares - self.spare, pool.min_size - self.total, 0)
        if pool.max_size is not None:
            wanted = min(wanted, pool.max_size - self.total)
        return max(wanted, 0)


def pool_counts(db: Session, pool: PoolSettings) -> PoolCounts:
    """What the pool holds. `total` counts every desktop taking a place (canaries too, for `max_size`);
    `spare` only those a connect could be given now, so a rollout's canaries never stand in for the
    pool's spares while they are on trial (after promotion they are spares like any other)."""
    holding = (Desktop.pool_name == pool.name) & Desktop.state.in_(HOLDING_STATES)
    takeable = [holding, *spare_conditions(db, pool)]
    total = db.scalar(select(func.count()).select_from(Desktop).where(holding))
    spare = db.scalar(select(func.count()).select_from(Desktop).where(*takeable))
    in_use = db.scalar(
        select(func.count(func.distinct(Desktop.id)))
        .select_from(Desktop)
        .join(DesktopSession, DesktopSession.desktop_id == Desktop.id)
        .where(holding, DesktopSession.state == "active")
    )
    spare_ready = db.scalar(
        select(func.count()).select_from(Desktop).where(*takeable, Desktop.ready_at.is_not(None))
    )
    return PoolCounts(total, spare, in_use, spare_ready)


class EnoughSpares(Exception):
    """The pool has its spares and minimum size already (another broker's pass started them)."""


def spare_still_missing(db: Session, pool: PoolSettings) -> None:
    """In a spare's claim transaction: hold the pool's row, then count again; EnoughSpares if none is missing.

    A conditional write instead of trusting the pass's count: two brokers' pool managers (or a pass that
    outlived its lease) counting the same shortfall at once would otherwise both fill it and overshoot
    `spares` and `max_size`. The UPDATE holds the pool's row (PostgreSQL) or the write lock (SQLite) until
    commit, so every spare start of the pool counts after the one before it committed.
    """
    db.execute(update(Pool).where(Pool.name == pool.name).values(revision=Pool.revision))
    if not pool_counts(db, pool).missing(pool):
        raise EnoughSpares(pool.name)


def publish(pool: str, counts: PoolCounts) -> None:
    POOL_DESKTOPS.labels(pool=pool, use=PoolDesktops.TOTAL.value).set(counts.total)
    POOL_DESKTOPS.labels(pool=pool, use=PoolDesktops.SPARE.value).set(counts.spare)
    POOL_DESKTOPS.labels(pool=pool, use=PoolDesktops.SPARE_READY.value).set(counts.spare_ready)
    POOL_DESKTOPS.labels(pool=pool, use=PoolDesktops.IN_USE.value).set(counts.in_use)


def booting_spares(db: Session, pool: PoolSettings) -> list[Desktop]:
    """Running spares (never canaries) whose guest has not shown ready yet."""
    return list(
        db.scalars(
            select(Desktop)
            .where(*spare_conditions(db, pool), Desktop.state == "running", Desktop.ready_at.is_(None))
            .order_by(Desktop.id)
        ).all()
    )


def still_running(db: Session, desktop_id: int) -> bool:
    return db.scalar(select(Desktop.state).where(Desktop.id == desktop_id)) == "running"


def mark_ready(db: Session, desktop_id: int) -> bool:
    return bool(
        db.execute(
            update(Desktop)
            .where(Desktop.id == desktop_id, Desktop.ready_at.is_(None))
            .values(ready_at=utcnow())
        ).rowcount
    )


class PoolManager(PoolTask):
    """One asyncio task on the broker's loop; `kick()` runs the next pass now instead of on the timer."""

    name = "pool-manager"
    pass_interval_s = PASS_INTERVAL_S

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.size_guard = PoolSizeGuard(self.config.pools)
        self._watching: dict[int, asyncio.Task] = {}
        for pool in self.config.pools:
            publish(pool.name, PoolCounts(0, 0, 0))

    @property
    def wanted(self) -> bool:
        return any(pool.spares or pool.min_size for pool in self.config.pools)

    async def stop(self) -> None:
        await super().stop()  # first, so no pass starts new watchers
        watchers = list(self._watching.values())
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    def start(self) -> None:
        self.desktops.pool_changed = self.kick
        super().start()

    def pools_changed(self) -> None:
        """The pool catalog took on changed pools (broker/pool_catalog.py)."""
        self.size_guard = PoolSizeGuard(self.config.pools)

    async def run_once(self) -> None:
        await self.reconcile_once()

    async def reconcile_once(self) -> None:
        for pool in self.config.pools:
            try:
                await self._reconcile_pool(pool)
            except errors.BrokerError as exc:
                # No capacity or a host down: logged, and the next pass tries again.
                log.warning("pool %s: cannot start a spare: %s", pool.name, exc.message)
            except Exception:
                log.exception("pool %s: reconcile pass failed", pool.name)

    async def _reconcile_pool(self, pool: PoolSettings) -> None:
        # A pool larger than its hosts could ever hold is logged (naming the key) and not filled at all.
        if not await self.db.run(partial(self.size_guard.check, pool=pool)):
            return
        await retire_outdated_spares(self.desktops, self.db, pool)  # after a rollout (broker/rollout.py)
        counts = await self.db.run(partial(pool_counts, pool=pool))
        publish(pool.name, counts)
        missing = counts.missing(pool)
        guard = partial(spare_still_missing, pool=pool)
        try:
            for _ in range(missing):
                try:
                    desktop = await self.desktops.start_spare(pool, guard)
                except EnoughSpares:
                    log.info("pool %s: has its spares already (started by another broker)", pool.name)
                    break
                log.info(
                    "pool %s: spare %s started on host %s", pool.name, desktop.domain_name, desktop.host_name
                )
                self._watch(pool, desktop)
        finally:
            # Also the spares an earlier pass or another broker process started.
            for desktop in await self.db.run(partial(booting_spares, pool=pool)):
                self._watch(pool, desktop)
        if missing:
            publish(pool.name, await self.db.run(partial(pool_counts, pool=pool)))

    # -- readiness of spares ---------------------------------------------------------------------------

    def _watch(self, pool: PoolSettings, desktop: Desktop) -> None:
        if desktop.id in self._watching:
            return
        task = asyncio.get_running_loop().create_task(self._watch_until_ready(pool, desktop))
        self._watching[desktop.id] = task
        task.add_done_callback(lambda _: self._watching.pop(desktop.id, None))

    async def _watch_until_ready(self, pool: PoolSettings, desktop: Desktop) -> None:
        deadline = time.monotonic() + pool.ready_deadline_s
        name = desktop.domain_name
        while True:
            try:
                readiness = await self.desktops.readiness(desktop)
            except errors.BrokerError as exc:
                if not await self.db.run(partial(still_running, desktop_id=desktop.id)):
                    return  # taken and logged off, removed, or lost with its host: nothing left to watch
                # Host briefly unreachable: the monitor decides about hosts; keep polling.
                readiness = Readiness(ready=False)
                log.debug("pool %s: spare %s: readiness unknown: %s", pool.name, name, exc.message)
            except Exception:
                log.exception("pool %s: spare %s: asking its readiness failed", pool.name, name)
                return
            if readiness.ready:
                break
            if readiness.crashed:
                await self._replace_crashed(pool, desktop, readiness.crashed)
                return
            if time.monotonic() >= deadline:
                SPARES_NOT_READY.labels(outcome="deadline").inc()
                log.warning(
                    "pool %s: spare %s did not show ready within %d s (console: %s); handed out anyway",
                    *(pool.name, name, pool.ready_deadline_s, readiness.last_output or "(empty)"),
                )
                break
            await asyncio.sleep(READY_POLL_S)
        if await self.db.run(partial(mark_ready, desktop_id=desktop.id)):
            booted = (utcnow() - desktop.created_at).total_seconds()
            DESKTOP_GUEST_READY_DURATION.observe(max(booted, 0.0))
            log.info(
                "pool %s: spare %s ready on host %s (%.1f s)", pool.name, name, desktop.host_name, booted
            )
            publish(pool.name, await self.db.run(partial(pool_counts, pool=pool)))

    async def _replace_crashed(self, pool: PoolSettings, desktop: Desktop, panic: str) -> None:
        SPARES_NOT_READY.labels(outcome="crashed").inc()
        log.error(
            "pool %s: spare %s crashed while booting (%s); replacing it",
            pool.name,
            desktop.domain_name,
            panic,
        )
        # A user who took it meanwhile keeps it; their connect sees what the desktop shows.
        await remove_spare(self.desktops, self.db, desktop, "crashed spare")
        self.kick()
