"""/api/v1/desktops and /api/v1/pools/<pool>/connect: my pools, and getting onto a desktop."""

from __future__ import annotations

from broker.web.apihandlers.base import APIHandler


class DesktopsAPIHandler(APIHandler):
    async def get(self) -> None:
        user = self.require_user()
        pools = await self.desktops.pools_for(user)
        self.write_json({"pools": [pool.as_json() for pool in pools]})


class ConnectAPIHandler(APIHandler):
    async def post(self, pool: str) -> None:
        user = self.require_user()
        session = await self.desktops.connect(user, pool, self.client_ip)
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
