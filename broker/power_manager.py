"""The power manager: the periodic task that applies dedicated pools' power policies (broker/power.py)."""

from __future__ import annotations

from functools import partial

from broker.config import PoolSettings
from broker.db.models import utcnow
from broker.pool_task import PoolTask
from broker.power import PASS_INTERVAL_S, POWER_OFF, power_counts, publish_power, unused_desktops
from monitoring.metrics import PowerState


class PowerManager(PoolTask):
    """Applies each dedicated pool's power policy to desktops nobody is logged on to."""

    name = "power-manager"
    pass_interval_s = PASS_INTERVAL_S

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for pool in self.config.pools:
            publish_power(pool.name, dict.fromkeys(PowerState, 0))

    @property
    def wanted(self) -> bool:
        return any(pool.power_policy != "keep_running" for pool in self.config.pools)

    async def run_once(self) -> int:
        return await self.apply_once()

    async def apply_once(self) -> int:
        """Power off every desktop over its pool's delay now; returns how many were powered off."""
        count = 0
        for pool in self.config.pools:
            if pool.power_policy != "keep_running":
                count += await self._apply_pool(pool)
            publish_power(pool.name, await self.db.run(partial(power_counts, pool=pool.name)))
        return count

    async def _apply_pool(self, pool: PoolSettings) -> int:
        unused = await self.db.run(partial(unused_desktops, pool=pool, now=utcnow()))
        done = 0
        for desktop in unused:
            # One desktop failing (host down) must not keep the others running; the next pass retries it.
            if await self.desktops.power_off(pool, desktop, POWER_OFF[pool.power_policy]):
                done += 1
        return done
