"""Administrator pages of smart work centers: /admin/centers (the list) and /admin/centers/{name} (a day's
occupancy). Self-contained (own template, no shared admin navigation), so an admin console can link them."""

from __future__ import annotations

from functools import partial

import tornado.web

from broker import errors
from broker.centers import list_centers, show_center
from broker.db.models import utcnow
from broker.reservations import occupancy, seat_label
from broker.web.apihandlers.centers import parse_day
from broker.web.base import BaseHandler


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
        self.render("admin_center.html", center=center, day=day, occupancy=taken, seat_label=seat_label)


default_handlers = [
    (r"/admin/centers", CentersAdminPageHandler),
    (r"/admin/centers/([a-z0-9][a-z0-9-]{0,62})", OccupancyAdminPageHandler),
]
