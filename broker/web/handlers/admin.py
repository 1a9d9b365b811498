"""The admin console (/admin/…): pages for members of `broker.admin_groups`.

Pages are rendered on the server from the same read views the admin REST API answers with
(broker/operations.py, inventory, image catalog); their buttons and forms call that REST API
(static/admin.js), so every change goes through the services that check and audit it.
"""

from __future__ import annotations

import json
from functools import partial
from urllib.parse import urlencode

import tornado.web

from broker.image_catalog import catalog
from broker.inventory import list_hosts
from broker.operations import (
    AUDIT_ACTION_HINTS,
    AuditQuery,
    SessionQuery,
    overview,
    pool_overview,
    search_audit,
    search_sessions,
)
from broker.web.base import BaseHandler
from hypervisor.registry import PROVIDERS
from monitoring.metrics import RolloutState

# The console's sections in menu order: (key, path). A new page adds one line here, one route below,
# and its "admin.nav.<key>" text in both languages (broker/web/i18n_admin.py).
ADMIN_SECTIONS: list[tuple[str, str]] = [
    ("dashboard", "/admin"),
    ("hosts", "/admin/hosts"),
    ("pools", "/admin/pools"),
    ("sessions", "/admin/sessions"),
    ("images", "/admin/images"),
    ("audit", "/admin/audit"),
    ("recordings", "/admin/recordings"),
    ("centers", "/admin/centers"),
    ("attendance", "/admin/centers/attendance"),
]


class AdminPageHandler(BaseHandler):
    """Signed-out visitors go to the sign-in page; signed-in users outside the admin groups get 403."""

    section = "dashboard"

    async def prepare(self) -> None:
        await super().prepare()
        if self.current_user:
            self.require_admin()

    def render_page(self, template: str, **values) -> None:
        self.remember_language()
        self.render(
            f"admin/{template}",
            section=self.section,
            sections=ADMIN_SECTIONS,
            to_json=lambda value: json.dumps(value, ensure_ascii=False, sort_keys=True),
            **values,
        )


class DashboardPage(AdminPageHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.render_page("dashboard.html", overview=await self.db.run(partial(overview, config=self.config)))


class HostsPage(AdminPageHandler):
    section = "hosts"

    @tornado.web.authenticated
    async def get(self) -> None:
        hosts = await self.db.run(list_hosts)
        pool = self.get_query_argument("pool", "")
        explanation = await self.desktops.explain_placement(pool) if pool else None
        self.render_page(
            "hosts.html",
            hosts=[host.as_json() for host in hosts],
            pools=self.config.pools,
            providers=sorted(PROVIDERS),
            explained_pool=pool,
            explanation=explanation,
        )


class PoolsPage(AdminPageHandler):
    section = "pools"

    @tornado.web.authenticated
    async def get(self) -> None:
        pools = [
            await self.db.run(partial(pool_overview, pool=pool, config=self.config))
            for pool in self.config.pools
        ]
        self.render_page("pools.html", pools=pools, rollout_states=[state.value for state in RolloutState])


class SessionsPage(AdminPageHandler):
    section = "sessions"

    @tornado.web.authenticated
    async def get(self) -> None:
        query = self.parse_query(SessionQuery)
        sessions = await self.db.run(partial(search_sessions, query=query))
        self.render_page("sessions.html", query=query, sessions=sessions)


class ImagesPage(AdminPageHandler):
    section = "images"

    @tornado.web.authenticated
    async def get(self) -> None:
        self.render_page("images.html", images=await self.db.run(catalog))


class AuditPage(AdminPageHandler):
    section = "audit"

    @tornado.web.authenticated
    async def get(self) -> None:
        query = self.parse_query(AuditQuery)
        events = await self.db.run(partial(search_audit, query=query))
        self.render_page(
            "audit.html",
            query=query,
            events=events,
            actions=AUDIT_ACTION_HINTS,
            export_url="/api/v1/admin/audit/export?" + urlencode(self.filters(query)),
        )

    @staticmethod
    def filters(query: AuditQuery) -> dict[str, str]:
        return {
            name: value.isoformat() if hasattr(value, "isoformat") else str(value)
            for name, value in query.model_dump(exclude_none=True).items()
        }


default_handlers = [
    (r"/admin/?", DashboardPage),
    (r"/admin/hosts", HostsPage),
    (r"/admin/pools", PoolsPage),
    (r"/admin/sessions", SessionsPage),
    (r"/admin/images", ImagesPage),
    (r"/admin/audit", AuditPage),
]
