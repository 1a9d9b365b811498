"""The pool manager: keeps each pool's prewarmed spares and minimum size.

Level triggered (ARCHITECTURE.md, principle 1): every pass counts what each pool holds in the
database and starts what is missing, so a missed wake-up, a failed start or a broker restart is
repaired by the next pass. Desktops are placed and booted through DesktopService (placement,
claim, driver calls on its executor), never from here directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker import errors
from broker.background import PeriodicTask
from broker.config import PoolSettings
from broker.db import Database
from broker.db.models import Desktop
from broker.db.models import Session as DesktopSession
from broker.desktops import DesktopService
from broker.placement.claim import HOLDING_STATES
from broker.pool_images import PoolSizeGuard
from broker.rollout import retire_outdated_spares
from monitoring.metrics import POOL_DESKTOPS, PoolDesktops
from vdi.config import Config

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 10.0


@dataclass(frozen=True)
class PoolCounts:
    total: int
    spare: int
    in_use: int

    def missing(self, pool: PoolSettings) -> int:
        """How many spares to start now: enough for `spares` idle and `min_size` in all, within `max_size`."""
        wanted = max(pool.spares - self.spare, pool.min_size - self.total, 0)
        if pool.max_size is not None:
            wanted = min(wanted, pool.max_size - self.total)
        return max(wanted, 0)


def pool_counts(db: Session, pool: str) -> PoolCounts:
    holding = (Desktop.pool_name == pool) & Desktop.state.in_(HOLDING_STATES)
    total = db.scalar(select(func.count()).select_from(Desktop).where(holding))
    spare = db.scalar(
        select(func.count()).select_from(Desktop).where(holding, Desktop.assigned_user.is_(None))
    )
    in_use = db.scalar(
        select(func.count(func.distinct(Desktop.id)))
        .select_from(Desktop)
        .join(DesktopSession, DesktopSession.desktop_id == Desktop.id)
        .where(holding, DesktopSession.state == "active")
    )
    return PoolCounts(total, spare, in_use)


def publish(pool: str, counts: PoolCounts) -> None:
    POOL_DESKTOPS.labels(pool=pool, use=PoolDesktops.TOTAL.value).set(counts.total)
    POOL_DESKTOPS.labels(pool=pool, use=PoolDesktops.SPARE.value).set(counts.spare)
    POOL_DESKTOPS.labels(pool=pool, use=PoolDesktops.IN_USE.value).set(counts.in_use)


class PoolManager(PeriodicTask):
    """One asyncio task on the broker's loop; `kick()` runs the next pass now instead of on the timer."""

    name = "pool-manager"

    def __init__(
        self, config: Config, db: Database, desktops: DesktopService, interval_s: float = PASS_INTERVAL_S
    ) -> None:
        super().__init__(interval_s)
        self.config = config
        self.db = db
        self.desktops = desktops
        self.size_guard = PoolSizeGuard(config.pools)
        for pool in config.pools:
            publish(pool.name, PoolCounts(0, 0, 0))

    def start(self) -> None:
        self.desktops.pool_changed = self.kick
        super().start()

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
        counts = await self.db.run(partial(pool_counts, pool=pool.name))
        publish(pool.name, counts)
        missing = counts.missing(pool)
        for _ in range(missing):
            desktop = await self.desktops.start_spare(pool)
            log.info("pool %s: spare %s ready on host %s", pool.name, desktop.domain_name, desktop.host_name)
        if missing:
            publish(pool.name, await self.db.run(partial(pool_counts, pool=pool.name)))
