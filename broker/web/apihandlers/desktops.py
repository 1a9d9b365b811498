"""/api/v1/desktops and /api/v1/pools/<pool>/connect: my pools, and getting onto a desktop."""

from __future__ import annotations

from broker.web.apihandlers.base import APIHandler
from broker.web.openapi import DESKTOP, STR, Operation, array, obj

POOL_VIEW = obj(
    "name",
    "display_name",
    "state",
    name=STR,
    display_name=STR,
    state=STR,
    desktop={"anyOf": [DESKTOP, {"type": "null"}]},
    session_id={"anyOf": [STR, {"type": "null"}]},
)


class DesktopsAPIHandler(APIHandler):
    openapi = {
        "get": Operation(
            "listMyPools",
            "The pools I am entitled to, with my desktops",
            obj("pools", pools=array(POOL_VIEW)),
            tags=("desktops",),
            links={"connect": {"pool": "$response.body#/pools/0/name"}},
        )
    }

    user_read_with_work = True  # the session's user in the desktops' transaction

    async def get(self) -> None:
        who = self.session_user()
        pools = await self.desktops.pools_for(who)
        self.signed_in(who)
        self.write_json({"pools": [pool.as_json() for pool in pools]})


class ConnectAPIHandler(APIHandler):
    openapi = {
        "post": Operation(
            "connect",
            "Get onto a desktop of the pool: my own, a spare or a new one",
            obj("session_id", "desktop", "console_url", session_id=STR, desktop=DESKTOP, console_url=STR),
            path_params=("pool",),
            tags=("desktops",),
            links={
                op: {"session_id": "$response.body#/session_id"}
                for op in ("getSession", "issueConsoleToken", "logoff")
            },
        )
    }

    async def post(self, pool: str) -> None:
        user = self.require_user()
        session = await self.desktops.connect(user, pool, self.client_ip, self.device_fingerprint())
        self.bind_session(session.id)
        self.write_json(
            {
                "session_id": session.id,
                "desktop": session.desktop.as_json(),
                "console_url": session.console_url,
            }
        )


default_handlers = [
    (r"/api/v1/desktops", DesktopsAPIHandler),
    (r"/api/v1/pools/([^/]+)/connect", ConnectAPIHandler),
]
