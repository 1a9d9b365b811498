"""/api/v1/sessions/<id>: a desktop session's state, its console tokens, and logoff."""

from __future__ import annotations

from broker.web.apihandlers.base import APIHandler


class SessionAPIHandler(APIHandler):
    async def get(self, session_id: str) -> None:
        user = self.require_user()
        session = await self.desktops.session(user, session_id)
        self.write_json(session.as_json())


class ConsoleTokenAPIHandler(APIHandler):
    async def post(self, session_id: str) -> None:
        user = self.require_user()
        grant = await self.desktops.console_token(user, session_id)
        # The token travels only in this body (never in a URL the broker logs), and is not cached.
        self.write_json(grant.as_json())


class LogoffAPIHandler(APIHandler):
    async def post(self, session_id: str) -> None:
        user = self.require_user()
        session = await self.desktops.logoff(user, session_id, self.client_ip)
        self.write_json(session.as_json())


default_handlers = [
    (r"/api/v1/sessions/([^/]+)", SessionAPIHandler),
    (r"/api/v1/sessions/([^/]+)/console-token", ConsoleTokenAPIHandler),
    (r"/api/v1/sessions/([^/]+)/logoff", LogoffAPIHandler),
]
