"""Portal pages: the start page, my desktops, and the console."""

from __future__ import annotations

import tornado.web

from broker.db.models import utcnow
from broker.web.base import BaseHandler
from broker.web.i18n import translator

CONSOLE_STRINGS = (
    "connecting",
    "connected",
    "disconnected",
    "connection_lost",
    "security_failure",
    "logging_off",
    "session_ended",
    "clipboard_blocked_to_desktop",
    "clipboard_blocked_to_client",
    "clipboard_truncated",
)


class RootHandler(BaseHandler):
    def get(self) -> None:
        self.redirect("/desktops" if self.current_user else "/login")


class DesktopsHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.remember_language()
        pools = await self.desktops.pools_for(self.current_user)
        # The smart work center the client address is at, if any (docs/centers.md).
        arrival = await self.settings["reservations"].arrival(self.client_ip, self.device_certificate())
        self.render("desktops.html", pools=pools, arrival=arrival)


class ConsoleHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, session_id: str) -> None:
        self.remember_language()
        session = await self.desktops.session(self.current_user, session_id)
        pool = self.config.pool(session.desktop.pool)
        _ = translator(self.lang)
        self.render(
            "console.html",
            session=session,
            pool_name=pool.display_name if pool else session.desktop.pool,
            # Sessions on session hosts take the browser's size; VM displays are scaled (docs/session-hosts.md).
            resize="remote" if pool and pool.kind in ("session", "app") else "scale",
            # Who and from where; the page adds the time (docs/gateway.md, "Watermark").
            watermark=f"{self.current_user.username} · {self.client_ip}" if pool and pool.watermark else None,
            strings={key: _(f"console.{key}") for key in CONSOLE_STRINGS} | {"network": _("error.network")},
            seat_ends_in_ms=await self.seat_ends_in_ms(),
        )

    async def seat_ends_in_ms(self) -> int | None:
        """At a center terminal, the time left on the user's seat: the page then leaves for the kiosk (and
        from there the sign-in page) when it ends, as the broker cuts the console (broker/seat_ends.py)."""
        reservations = self.settings["reservations"]
        arrival = await reservations.arrival(self.client_ip, self.device_certificate())
        if arrival is None:
            return None
        until = await reservations.seat_until(arrival.center.name, self.current_user.username)
        return None if until is None else max(0, int((until - utcnow()).total_seconds() * 1000))


default_handlers = [
    (r"/", RootHandler),
    (r"/desktops", DesktopsHandler),
    (r"/console/([^/]+)", ConsoleHandler),
]
