"""/api/v1/sessions/<id>: a desktop session's state, its console tokens, and logoff."""

from __future__ import annotations

from urllib.parse import urlencode

from broker.web.apihandlers.base import APIHandler
from broker.web.openapi import INT, SESSION, STR, Operation, obj


def with_request_id(gateway_url: str, request_id: str) -> str:
    """The gateway URL carrying this request's id, so the gateway's lines for the tunnel carry it too.

    The id is not a secret (it is in the response headers and the logs); the token stays out of this URL
    and is added by the console page.
    """
    separator = "&" if "?" in gateway_url else "?"
    return f"{gateway_url}{separator}{urlencode({'rid': request_id})}"


class SessionAPIHandler(APIHandler):
    openapi = {
        "get": Operation(
            "getSession", "My desktop session", SESSION, path_params=("session_id",), tags=("sessions",)
        )
    }

    async def get(self, session_id: str) -> None:
        user = self.require_user()
        session = await self.desktops.session(user, session_id)
        self.bind_session(session_id)
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

    user_read_with_work = True  # the session's user in the token's transaction

    async def post(self, session_id: str) -> None:
        who = self.session_user()
        grant = await self.desktops.console_token(who, session_id, self.device_fingerprint())
        self.signed_in(who)
        self.bind_session(session_id)
        body = grant.as_json()
        body["gateway_url"] = with_request_id(grant.gateway_url, self.request_id)
        # The token travels only in this body (never in a URL the broker logs), and is not cached.
        self.write_json(body)


class LogoffAPIHandler(APIHandler):
    openapi = {
        "post": Operation(
            "logoff", "Log my desktop session off", SESSION, path_params=("session_id",), tags=("sessions",)
        )
    }

    async def post(self, session_id: str) -> None:
        user = self.require_user()
        session = await self.desktops.logoff(user, session_id, self.client_ip)
        self.bind_session(session_id)
        self.write_json(session.as_json())


default_handlers = [
    (r"/api/v1/sessions/([^/]+)", SessionAPIHandler),
    (r"/api/v1/sessions/([^/]+)/console-token", ConsoleTokenAPIHandler),
    (r"/api/v1/sessions/([^/]+)/logoff", LogoffAPIHandler),
]
