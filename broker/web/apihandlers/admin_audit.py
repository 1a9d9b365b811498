"""/api/v1/admin/audit: search the audit log; /api/v1/admin/audit/export: the same rows as CSV (itself audited)."""

from __future__ import annotations

from functools import partial

from broker.operations import AuditQuery, audit_csv, record_export, search_audit
from broker.web.apihandlers.base import AdminAPIHandler
from broker.web.openapi import AUDIT_EVENT, STR, Operation, array, obj


class AuditAPIHandler(AdminAPIHandler):
    openapi = {
        "get": Operation(
            "searchAudit",
            "Audit events, newest first, by user, action and time",
            obj("events", events=array(AUDIT_EVENT)),
            auth="admin",
            query=AuditQuery,
            tags=("admin",),
        )
    }

    async def get(self) -> None:
        self.require_admin()
        query = self.parse_query(AuditQuery)
        self.write_json({"events": await self.db.run(partial(search_audit, query=query))})


class AuditExportAPIHandler(AdminAPIHandler):
    openapi = {
        "get": Operation(
            "exportAudit",
            "The same events as CSV (UTF-8 with a byte order mark); the export is audited",
            STR,
            auth="admin",
            query=AuditQuery,
            media_type="text/csv",
            tags=("admin",),
        )
    }

    async def get(self) -> None:
        admin = self.require_admin()
        query = self.parse_query(AuditQuery)
        rows = await self.db.run(partial(search_audit, query=query))
        await self.db.run(
            partial(
                record_export, actor=admin.username, client_ip=self.client_ip, query=query, rows=len(rows)
            )
        )
        self.set_header("Content-Type", "text/csv; charset=UTF-8")
        self.set_header("Content-Disposition", 'attachment; filename="audit.csv"')
        self.finish(audit_csv(rows).encode("utf-8"))


default_handlers = [
    (r"/api/v1/admin/audit", AuditAPIHandler),
    (r"/api/v1/admin/audit/export", AuditExportAPIHandler),
]
