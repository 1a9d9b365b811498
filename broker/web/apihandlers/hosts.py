"""/api/v1/hosts: the host inventory, and /api/v1/placement/explain: why placement would choose a host.

Administrators only (members of `broker.admin_groups`). Blocking work (the database, connecting
to a new host) runs in executors, never on the loop.
"""

from __future__ import annotations

import asyncio
from functools import partial

from sqlalchemy.exc import IntegrityError

from broker import errors
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
from hypervisor.provider import DesktopProvider

HOST_NAME = r"[^/]{1,64}"


class HostsAdminHandler(AdminAPIHandler):
    async def blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    @property
    def providers(self) -> dict[str, DesktopProvider]:
        # Placement considers the hosts the connect flow has a provider for.
        return self.desktops.providers


class HostsAPIHandler(HostsAdminHandler):
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
        force = self.get_query_argument("force", "false").lower() in ("1", "true", "yes")
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
    async def get(self) -> None:
        self.require_admin()
        name = self.get_query_argument("pool", "")
        if not name:
            raise errors.InvalidField("pool: the pool to explain placement for is required", field="pool")
        self.write_json(await self.desktops.explain_placement(name))


default_handlers = [
    (r"/api/v1/hosts", HostsAPIHandler),
    (rf"/api/v1/hosts/({HOST_NAME})", HostAPIHandler),
    (r"/api/v1/placement/explain", PlacementExplainAPIHandler),
]
