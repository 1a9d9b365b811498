"""Administrator pages of smart work centers: /admin/centers (the list) and /admin/centers/{name} (a day's
occupancy). Self-contained (own template, no shared admin navigation), so an admin console can link them."""

from __future__ import annotations

from functools import partial

import tornado.web
from pydantic import ValidationError

from broker import errors
from broker.attendance import CorrectionRequest, correct, daily_records
from broker.centers import list_centers, show_center
from broker.db.models import utcnow
from broker.reservations import occupancy, seat_label
from broker.terminals import list_terminals
from broker.web.apihandlers.attendance import DEFAULT_ZONE
from broker.web.apihandlers.centers import parse_day
from broker.web.base import BaseHandler
from broker.web.handlers.centers import TIMES, local_time


class AdminPageHandler(BaseHandler):
    def require_admin(self) -> None:
        admin_groups = {group.lower() for group in self.config.broker.admin_groups}
        if not {group.lower() for group in self.current_user.groups} & admin_groups:
            raise errors.Forbidden("This needs a member of an administrator group (broker.admin_groups).")


class CentersAdminPageHandler(AdminPageHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.require_admin()
        self.remember_language()
        self.render("admin_centers.html", centers=await self.db.run(list_centers))


class OccupancyAdminPageHandler(AdminPageHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        self.require_admin()
        self.remember_language()
        center = await self.db.run(partial(show_center, name=name))
        day = parse_day(self.get_query_argument("day", None), utcnow().astimezone(center.tz).date())
        taken = await self.db.run(partial(occupancy, name=name, day=day))
        terminals = await self.db.run(partial(list_terminals, center=name))
        self.render(
            "admin_center.html",
            center=center,
            day=day,
            occupancy=taken,
            seat_label=seat_label,
            terminals=terminals,
        )


class AttendanceAdminPageHandler(AdminPageHandler):
    """A range of days' attendance records, their CSV, and the correction form."""

    @tornado.web.authenticated
    async def get(self) -> None:
        self.require_admin()
        self.remember_language()
        await self.render_page()

    async def render_page(self, error: str | None = None, field: str | None = None, form: dict | None = None):
        today = utcnow().astimezone(DEFAULT_ZONE).date()
        first = parse_day(self.get_argument("from", None), today, "from")
        last = parse_day(self.get_argument("to", None), first, "to")
        center = self.get_argument("center", "") or None
        centers = await self.db.run(list_centers)
        records = await self.db.run(partial(daily_records, first=first, last=last, center=center))
        query = f"from={first}&to={last}" + (f"&center={center}" if center else "")
        self.render(
            "admin_attendance.html",
            centers=centers,
            records=records,
            first=first,
            last=last,
            center=center,
            csv_url=f"/api/v1/admin/attendance?{query}&format=csv&lang={self.lang}",
            times=TIMES,
            form=form or {"day": first.isoformat()},
            error=error,
            error_field=field,
            corrected=self.get_argument("corrected", None),
        )

    @tornado.web.authenticated
    async def post(self) -> None:
        self.require_admin()
        keys = ("username", "center", "day", "checked_in", "checked_out", "reason")
        form = {key: self.get_body_argument(key, "")[:512] for key in keys}
        try:
            await self._correct(form)
        except errors.BrokerError as exc:
            self.set_status(exc.status)
            await self.render_page(self.localized_message(exc), exc.field, form)
            return
        self.redirect(f"/admin/centers/attendance?from={form['day']}&corrected=1", status=303)

    async def _correct(self, form: dict) -> None:
        centers = {c.name: c for c in await self.db.run(list_centers)}
        center = centers.get(form["center"])
        if center is None:
            raise errors.InvalidField("center: choose a center of the list", field="center")
        out = form["checked_out"]
        try:
            request = CorrectionRequest(
                username=form["username"].strip(),
                center=center.name,
                day=form["day"],
                checked_in_at=local_time(center, form["day"], form["checked_in"], "checked_in_at"),
                checked_out_at=local_time(center, form["day"], out, "checked_out_at") if out else None,
                reason=form["reason"].strip(),
            )
        except ValidationError as exc:
            raise errors.invalid_field(exc) from None
        admin = self.current_user.username
        await self.db.run(partial(correct, request=request, actor=admin, client_ip=self.client_ip))


default_handlers = [
    (r"/admin/centers", CentersAdminPageHandler),
    (r"/admin/centers/attendance", AttendanceAdminPageHandler),
    (r"/admin/centers/([a-z0-9][a-z0-9-]{0,62})", OccupancyAdminPageHandler),
]
