"""/api/v1/admin/sessions: search desktop sessions; …/{id}/logoff: an administrator logs one off."""

from __future__ import annotations

from functools import partial

from broker.operations import SessionQuery, search_sessions
from broker.web.apihandlers.base import AdminAPIHandler
from broker.web.openapi import SESSION, SESSION_ROW, Operation, array, obj

SESSION_ID = r"[0-9a-f-]{1,36}"


class SessionsAPIHandler(AdminAPIHandler):
    """GET /api/v1/admin/sessions?user=&state=: desktop sessions, newest first."""

    openapi = {
        "get": Operation(
            "searchSessions",
            "Desktop sessions, newest first, by user name prefix and state",
            obj("sessions", sessions=array(SESSION_ROW)),
            auth="admin",
            query=SessionQuery,
            tags=("admin",),
            links={
                "forceLogoff": {"session_id": "$response.body#/sessions/0/id"},
                "revokeUserSessions": {"username": "$response.body#/sessions/0/username"},
            },
        )
    }

    async def get(self) -> None:
        self.require_admin()
        query = self.parse_query(SessionQuery)
        self.write_json({"sessions": await self.db.run(partial(search_sessions, query=query))})


class ForceLogoffAPIHandler(AdminAPIHandler):
    openapi = {
        "post": Operation(
            "forceLogoff",
            "Log a user's desktop session off",
            SESSION,
            auth="admin",
            path_params=("session_id",),
            tags=("admin",),
        )
    }

    async def post(self, session_id: str) -> None:
        admin = self.require_admin()
        # The pool's kind still decides the desktop's fate: dedicated kept, floating destroyed.
        session = await self.desktops.end_session(session_id, admin.username, "force_logoff", self.client_ip)
        self.write_json(session.as_json())


default_handlers = [
    (r"/api/v1/admin/sessions", SessionsAPIHandler),
    (rf"/api/v1/admin/sessions/({SESSION_ID})/logoff", ForceLogoffAPIHandler),
]
