"""/api/v1/admin/overview: the dashboard's figures (sessions, hosts, pools, logons), for administrators."""

from __future__ import annotations

from functools import partial

from broker.operations import overview
from broker.web.apihandlers.base import AdminAPIHandler
from broker.web.openapi import OVERVIEW, Operation


class OverviewAPIHandler(AdminAPIHandler):
    openapi = {
        "get": Operation(
            "getOverview",
            "Sessions now, hosts by state, pools with spares and capacity, logons per minute",
            OVERVIEW,
            auth="admin",
            tags=("admin",),
        )
    }

    async def get(self) -> None:
        self.require_admin()
        self.write_json(await self.db.run(partial(overview, config=self.config)))


default_handlers = [
    (r"/api/v1/admin/overview", OverviewAPIHandler),
]
