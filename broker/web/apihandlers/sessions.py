"""/api/v1/sessions/<id>: a desktop session's state, its console tokens, and logoff."""

from __future__ import annotations

from broker.web.apihandlers.base import APIHandler
from broker.web.openapi import INT, SESSION, STR, Operation, obj


class SessionAPIHandler(APIHandler):
    openapi = {
        "get": Operation(
            "getSession", "My desktop session", SESSION, path_params=("session_id",), tags=("sessions",)
        )
    }

    async def get(self, session_id: str) -> None:
        user = self.require_user()
        session = await self.desktops.session(user, session_id)
        self.write_json(session.as_json())


class ConsoleTokenAPIHandler(APIHandler):
    openapi = {
        "post": Operation(
            "issueConsoleToken",
            "A single-use console token for the gateway (30 s at most)",
            obj("token", "gateway_url", "expires_in", token=STR, gateway_url=STR, expires_in=INT),
            path_params=("session_id",),
            tags=("sessions",),
        )
    }

    async def post(self, session_id: str) -> None:
        user = self.require_user()
        grant = await self.desktops.console_token(user, session_id)
        # The token travels only in this body (never in a URL the broker logs), and is not cached.
        self.write_json(grant.as_json())


class LogoffAPIHandler(APIHandler):
    openapi = {
        "post": Operation(
            "logoff", "Log my desktop session off", SESSION, path_params=("session_id",), tags=("sessions",)
        )
    }

    async def post(self, session_id: str) -> None:
        user = self.require_user()
        session = await self.desktops.logoff(user, session_id, self.client_ip)
        self.write_json(session.as_json())


default_handlers = [
    (r"/api/v1/sessions/([^/]+)", SessionAPIHandler),
    (r"/api/v1/sessions/([^/]+)/console-token", ConsoleTokenAPIHandler),
    (r"/api/v1/sessions/([^/]+)/logoff", LogoffAPIHandler),
]
