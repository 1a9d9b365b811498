"""/api/v1/hosts: the host inventory, and /api/v1/placement/explain: why placement would choose a host.

Administrators only (members of `broker.admin_groups`). Blocking work (the database, connecting
to a new host) runs in executors, never on the loop.
"""

from __future__ import annotations

import asyncio
from functools import partial

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from broker.db.models import Host
from broker.inventory import (
    HostChange,
    HostExists,
    NewHost,
    change_host,
    delete_host,
    insert_host,
    list_hosts,
    probe,
    show_host,
    update_host_gauges,
    validate_labels,
)
from broker.web.apihandlers.base import AdminAPIHandler
from broker.web.openapi import BOOL, HOST, INT, PLACEMENT_EXPLANATION, STR, Operation, array, obj
from hypervisor.provider import DesktopProvider

HOST_NAME = r"[^/]{1,64}"


class HostsAdminHandler(AdminAPIHandler):
    async def blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    @property
    def providers(self) -> dict[str, DesktopProvider]:
        # Placement considers the hosts the connect flow has a provider for.
        return self.desktops.providers


class RemovalQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(False, description="remove the host with its desktops (they are detached)")


class ExplainQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pool: str = Field(min_length=1, max_length=64, description="the pool to explain placement for")


class HostsAPIHandler(HostsAdminHandler):
    openapi = {
        "get": Operation(
            "listHosts",
            "The host inventory",
            obj("hosts", hosts=array(HOST)),
            auth="admin",
            tags=("hosts",),
            links={
                op: {"name": "$response.body#/hosts/0/name"} for op in ("getHost", "changeHost", "removeHost")
            },
        ),
        "post": Operation(
            "addHost",
            "Add a host (the broker connects to it first)",
            HOST,
            status=201,
            auth="admin",
            body=NewHost,
            tags=("hosts",),
        ),
    }

    async def get(self) -> None:
        self.require_admin()
        hosts = await self.db.run(list_hosts)
        self.write_json({"hosts": [host.as_json() for host in hosts]})

    async def post(self) -> None:
        admin = self.require_admin()
        new = self.parse_body(NewHost)
        validate_labels(new.labels or {}, self.config.placement)
        if await self.db.run(lambda db: db.get(Host, new.name) is not None):
            raise HostExists(f"A host named {new.name} already exists.", field="name", host=new.name)
        provider = await self.blocking(probe, new.settings())
        try:
            view = await self.db.run(
                partial(insert_host, new=new, actor=admin.username, client_ip=self.client_ip)
            )
        except IntegrityError:
            await self.blocking(provider.close)
            raise HostExists(
                f"A host named {new.name} already exists.", field="name", host=new.name
            ) from None
        except BaseException:
            await self.blocking(provider.close)
            raise
        self.providers[new.name] = provider
        self.desktops.placer.invalidate()
        await self.db.run(update_host_gauges)
        self.write_json(view.as_json(), status=201)


class HostAPIHandler(HostsAdminHandler):
    openapi = {
        "get": Operation("getHost", "One host", HOST, auth="admin", path_params=("name",), tags=("hosts",)),
        "patch": Operation(
            "changeHost",
            "Change a host: drain, enable, disable, labels, capacity, console route",
            HOST,
            auth="admin",
            body=HostChange,
            path_params=("name",),
            tags=("hosts",),
        ),
        "delete": Operation(
            "removeHost",
            "Remove a host (refused while it has desktops, unless forced)",
            obj("name", "removed", "desktops_detached", name=STR, removed=BOOL, desktops_detached=INT),
            auth="admin",
            query=RemovalQuery,
            path_params=("name",),
            tags=("hosts",),
        ),
    }

    async def get(self, name: str) -> None:
        self.require_admin()
        view = await self.db.run(partial(show_host, name=name))
        self.write_json(view.as_json())

    async def patch(self, name: str) -> None:
        admin = self.require_admin()
        change = self.parse_body(HostChange)
        if change.labels is not None:
            validate_labels(change.labels, self.config.placement)
        view = await self.db.run(
            partial(change_host, name=name, change=change, actor=admin.username, client_ip=self.client_ip)
        )
        self.desktops.placer.invalidate()
        await self.db.run(update_host_gauges)
        self.write_json(view.as_json())

    async def delete(self, name: str) -> None:
        admin = self.require_admin()
        force = self.parse_query(RemovalQuery).force
        detached = await self.db.run(
            partial(delete_host, name=name, force=force, actor=admin.username, client_ip=self.client_ip)
        )
        provider = self.providers.pop(name, None)
        self.desktops.placer.invalidate()
        if provider is not None:
            await self.blocking(provider.close)
        await self.db.run(update_host_gauges)
        self.write_json({"name": name, "removed": True, "desktops_detached": detached})


class PlacementExplainAPIHandler(HostsAdminHandler):
    openapi = {
        "get": Operation(
            "explainPlacement",
            "Where placement would put a new desktop of the pool now, and why",
            PLACEMENT_EXPLANATION,
            auth="admin",
            query=ExplainQuery,
            tags=("hosts",),
        )
    }

    async def get(self) -> None:
        self.require_admin()
        self.write_json(await self.desktops.explain_placement(self.parse_query(ExplainQuery).pool))


default_handlers = [
    (r"/api/v1/hosts", HostsAPIHandler),
    (rf"/api/v1/hosts/({HOST_NAME})", HostAPIHandler),
    (r"/api/v1/placement/explain", PlacementExplainAPIHandler),
]
