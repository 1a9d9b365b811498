"""/api/v1/admin/pools: the pools at a glance and the pools brokers share; /api/v1/admin/pools/{pool}/rollouts
and /rollout, /api/v1/admin/desktops/{id}/move: image rollouts.

Administrators only (`broker.admin_groups`). Pools live in the database (broker/pool_catalog.py): GET lists
them, POST adds one (the settings of a `[[pools]]` entry as JSON), PATCH /pools/{pool} changes the settings
it names, DELETE removes a pool that has no desktops. Every change is validated as the configuration file
would be (a 400 names the field), audited, and taken on by every broker within seconds.

Starting a rollout records it and answers 202; the rollout manager (broker/rollout.py) starts the canaries
and promotes or rolls back on its own; GET .../rollout shows where it stands.
"""

from __future__ import annotations

from functools import partial

from pydantic import BaseModel, ConfigDict

from broker.config import PoolSettings
from broker.operations import pool_overview
from broker.pool_catalog import PoolCatalog, add_pool, change_pool, remove_pool, show_pool
from broker.rollout import RolloutManager, RolloutRequest
from broker.web.apihandlers.base import AdminAPIHandler
from broker.web.openapi import DESKTOP, INT, POOL_OVERVIEW, ROLLOUT, STR, Operation, array, nullable, obj

POOL_NAME = r"[^/]{1,64}"


class PoolAdminHandler(AdminAPIHandler):
    @property
    def catalog(self) -> PoolCatalog:
        return self.settings["pool_catalog"]


class PoolChange(BaseModel):
    """PATCH /api/v1/admin/pools/{pool}: the settings to change, by their `[[pools]]` names."""

    model_config = ConfigDict(extra="allow")


POOL_SETTINGS = {**obj("name", "revision", name=STR, revision=INT), "additionalProperties": True}


class PoolAPIHandler(PoolAdminHandler):
    openapi = {
        "get": Operation(
            "getPool",
            "The pool's settings as the brokers share them",
            POOL_SETTINGS,
            auth="admin",
            path_params=("pool",),
            tags=("admin",),
        ),
        "patch": Operation(
            "changePool",
            "Change the settings it names (validated, audited, taken on by every broker)",
            POOL_SETTINGS,
            auth="admin",
            body=PoolChange,
            path_params=("pool",),
            tags=("admin",),
        ),
        "delete": Operation(
            "removePool",
            "Remove a pool that has no desktops",
            None,
            status=204,
            auth="admin",
            path_params=("pool",),
            tags=("admin",),
        ),
    }

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


class PoolsAPIHandler(PoolAdminHandler):
    """GET /api/v1/admin/pools: every pool's sizes, desktops, image version and latest rollout; POST adds a
    pool (the settings of a `[[pools]]` entry as JSON)."""

    openapi = {
        "get": Operation(
            "listPools",
            "Every pool's sizes, desktops, spares, image version and latest rollout",
            obj("pools", pools=array(POOL_OVERVIEW)),
            auth="admin",
            tags=("admin",),
            links={
                **{op: {"pool": "$response.body#/pools/0/name"} for op in ("getRollout", "startRollout")},
                "explainPlacement": {"pool": "$response.body#/pools/0/name"},
                "getPool": {"pool": "$response.body#/pools/0/name"},
            },
        ),
        "post": Operation(
            "addPool",
            "Add a pool (validated as the configuration file would be, audited)",
            POOL_SETTINGS,
            status=201,
            auth="admin",
            body=PoolSettings,
            tags=("admin",),
        ),
    }

    async def get(self) -> None:
        self.require_admin()
        pools = [
            await self.db.run(partial(pool_overview, pool=pool, config=self.config))
            for pool in self.config.pools
        ]
        self.write_json({"pools": pools})

    async def post(self) -> None:
        admin = self.require_admin()
        change = partial(add_pool, data=self.json_body(), actor=admin.username, client_ip=self.client_ip)
        pool = await self.catalog.change(change)
        self.write_json(await self.db.run(partial(show_pool, name=pool.name)), status=201)


class RolloutsAPIHandler(RolloutAdminHandler):
    openapi = {
        "post": Operation(
            "startRollout",
            "Start rolling the pool out to another image version (canaries first)",
            ROLLOUT,
            status=202,
            auth="admin",
            body=RolloutRequest,
            path_params=("pool",),
            tags=("admin",),
        )
    }

    async def post(self, pool_name: str) -> None:
        admin = self.require_admin()
        pool = self.desktops.pool(pool_name)
        request = self.parse_body(RolloutRequest)
        view = await self.rollouts.request(pool, request, admin.username, self.client_ip)
        self.write_json(view.as_json(), status=202)


class RolloutStatusAPIHandler(RolloutAdminHandler):
    openapi = {
        "get": Operation(
            "getRollout",
            "The pool's image version and its latest rollout",
            obj("pool", "image", "rollout", pool=STR, image=STR, rollout=nullable(ROLLOUT)),
            auth="admin",
            path_params=("pool",),
            tags=("admin",),
        )
    }

    async def get(self, pool_name: str) -> None:
        self.require_admin()
        self.write_json(await self.rollouts.status(self.desktops.pool(pool_name)))


class MoveDesktopAPIHandler(RolloutAdminHandler):
    openapi = {
        "post": Operation(
            "moveDesktop",
            "Move one desktop to its pool's promoted version now",
            obj("desktop", desktop=nullable(DESKTOP)),
            auth="admin",
            path_params=("desktop_id",),
            tags=("admin",),
        )
    }

    async def post(self, desktop_id: str) -> None:
        admin = self.require_admin()
        moved = await self.rollouts.move_desktop(int(desktop_id), admin.username, self.client_ip)
        self.write_json({"desktop": moved.as_json() if moved else None})


default_handlers = [
    (r"/api/v1/admin/pools", PoolsAPIHandler),
    (rf"/api/v1/admin/pools/({POOL_NAME})", PoolAPIHandler),
    (rf"/api/v1/admin/pools/({POOL_NAME})/rollouts", RolloutsAPIHandler),
    (rf"/api/v1/admin/pools/({POOL_NAME})/rollout", RolloutStatusAPIHandler),
    (r"/api/v1/admin/desktops/([0-9]{1,9})/move", MoveDesktopAPIHandler),
]
