"""/api/v1/admin/pools: the pools brokers share; /api/v1/admin/pools/{pool}/rollouts and /rollout,
/api/v1/admin/desktops/{id}/move: image rollouts.

Administrators only (`broker.admin_groups`). Pools live in the database (broker/pool_catalog.py): GET lists
them, POST adds one (the settings of a `[[pools]]` entry as JSON), PATCH /pools/{pool} changes the settings
it names, DELETE removes a pool that has no desktops. Every change is validated as the configuration file
would be (a 400 names the field), audited, and taken on by every broker within seconds.

Starting a rollout records it and answers 202; the rollout manager (broker/rollout.py) starts the canaries
and promotes or rolls back on its own; GET .../rollout shows where it stands.
"""

from __future__ import annotations

from functools import partial

from broker.pool_catalog import PoolCatalog, add_pool, change_pool, list_pools, remove_pool, show_pool
from broker.rollout import RolloutManager, RolloutRequest
from broker.web.apihandlers.base import AdminAPIHandler

POOL_NAME = r"[^/]{1,64}"


class PoolAdminHandler(AdminAPIHandler):
    @property
    def catalog(self) -> PoolCatalog:
        return self.settings["pool_catalog"]


class PoolsAPIHandler(PoolAdminHandler):
    async def get(self) -> None:
        self.require_admin()
        self.write_json({"pools": await self.db.run(list_pools)})

    async def post(self) -> None:
        admin = self.require_admin()
        change = partial(add_pool, data=self.json_body(), actor=admin.username, client_ip=self.client_ip)
        pool = await self.catalog.change(change)
        self.write_json(await self.db.run(partial(show_pool, name=pool.name)), status=201)


class PoolAPIHandler(PoolAdminHandler):
    async def get(self, pool_name: str) -> None:
        self.require_admin()
        self.write_json(await self.db.run(partial(show_pool, name=pool_name)))

    async def patch(self, pool_name: str) -> None:
        admin = self.require_admin()
        body = self.json_body()
        await self.catalog.change(
            partial(change_pool, name=pool_name, changes=body, actor=admin.username, client_ip=self.client_ip)
        )
        self.write_json(await self.db.run(partial(show_pool, name=pool_name)))

    async def delete(self, pool_name: str) -> None:
        admin = self.require_admin()
        await self.catalog.change(
            partial(remove_pool, name=pool_name, actor=admin.username, client_ip=self.client_ip)
        )
        self.set_status(204)
        self.finish()


class RolloutAdminHandler(AdminAPIHandler):
    @property
    def rollouts(self) -> RolloutManager:
        return self.settings["rollout_manager"]


class RolloutsAPIHandler(RolloutAdminHandler):
    async def post(self, pool_name: str) -> None:
        admin = self.require_admin()
        pool = self.desktops.pool(pool_name)
        request = self.parse_body(RolloutRequest)
        view = await self.rollouts.request(pool, request, admin.username, self.client_ip)
        self.write_json(view.as_json(), status=202)


class RolloutStatusAPIHandler(RolloutAdminHandler):
    async def get(self, pool_name: str) -> None:
        self.require_admin()
        self.write_json(await self.rollouts.status(self.desktops.pool(pool_name)))


class MoveDesktopAPIHandler(RolloutAdminHandler):
    async def post(self, desktop_id: str) -> None:
        admin = self.require_admin()
        moved = await self.rollouts.move_desktop(int(desktop_id), admin.username, self.client_ip)
        self.write_json({"desktop": moved.as_json() if moved else None})


default_handlers = [
    (r"/api/v1/admin/pools", PoolsAPIHandler),
    (rf"/api/v1/admin/pools/({POOL_NAME})", PoolAPIHandler),
    (rf"/api/v1/admin/pools/({POOL_NAME})/rollouts", RolloutsAPIHandler),
    (rf"/api/v1/admin/pools/({POOL_NAME})/rollout", RolloutStatusAPIHandler),
    (r"/api/v1/admin/desktops/([0-9]{1,18})/move", MoveDesktopAPIHandler),
]
