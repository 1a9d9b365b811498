"""/api/v1/admin/centers: smart work centers for administrators; /api/v1/centers: what users may see.

Administrators (`broker.admin_groups`) add, change and remove centers and see a day's occupancy; every
change is audited (broker/centers.py). Signed-in users list the centers to book at, and ask which center
they are at (`/api/v1/centers/here`, from the client address: broker/web/client_address.py).
"""

from __future__ import annotations

import datetime as dt
from functools import partial

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker import errors
from broker.centers import (
    CenterChange,
    NewCenter,
    change_center,
    delete_center,
    insert_center,
    list_centers,
    show_center,
)
from broker.db.models import utcnow
from broker.reservations import Reservations, occupancy
from broker.terminals import NewTerminal, add_terminal, list_terminals, remove_terminal
from broker.web.apihandlers.base import AdminAPIHandler, APIHandler
from broker.web.openapi import (
    CENTER,
    CENTER_PUBLIC,
    HERE,
    OCCUPANCY,
    TERMINAL,
    Operation,
    array,
    obj,
)

CENTER_NAME = r"[^/]{1,64}"
TERMINAL_NAME = r"[^/]{1,64}"


def parse_day(text: str | None, default: dt.date, field: str = "day") -> dt.date:
    if not text:
        return default
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise errors.InvalidField(f"{field}: not a date (YYYY-MM-DD)", field=field) from None
    if not 2000 <= day.year <= 2999:  # day arithmetic near year 1 or 9999 would overflow
        raise errors.InvalidField(f"{field}: must be in the years 2000 to 2999", field=field)
    return day


def plausible_day(value: dt.date | None) -> dt.date | None:
    if value is not None and not 2000 <= value.year <= 2999:  # day arithmetic would overflow
        raise ValueError("must be in the years 2000 to 2999")
    return value


class OccupancyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    day: dt.date | None = Field(None, description="the center's local day (YYYY-MM-DD); default today")

    _plausible = field_validator("day")(plausible_day)


ADMIN = {"auth": "admin", "tags": ("centers",)}
CENTER_LINKS = {
    op: {"name": "$response.body#/name"}
    for op in ("getCenter", "changeCenter", "removeCenter", "getOccupancy", "listTerminals", "addTerminal")
}


class CentersAdminAPIHandler(AdminAPIHandler):
    openapi = {
        "get": Operation(
            "listCenters",
            "All smart work centers, with their networks and settings",
            obj("centers", centers=array(CENTER)),
            links={op: {"name": "$response.body#/centers/0/name"} for op in CENTER_LINKS},
            **ADMIN,
        ),
        "post": Operation(
            "addCenter", "Add a center", CENTER, status=201, body=NewCenter, links=CENTER_LINKS, **ADMIN
        ),
    }

    async def get(self) -> None:
        self.require_admin()
        centers = await self.db.run(list_centers)
        self.write_json({"centers": [center.as_json() for center in centers]})

    async def post(self) -> None:
        admin = self.require_admin()
        new = self.parse_body(NewCenter)
        view = await self.db.run(
            partial(insert_center, new=new, actor=admin.username, client_ip=self.client_ip)
        )
        self.write_json(view.as_json(), status=201)


class CenterAdminAPIHandler(AdminAPIHandler):
    openapi = {
        "get": Operation("getCenter", "One center", CENTER, path_params=("name",), **ADMIN),
        "patch": Operation(
            "changeCenter",
            "Change a center; fields left out stay as they are",
            CENTER,
            body=CenterChange,
            path_params=("name",),
            **ADMIN,
        ),
        "delete": Operation(
            "removeCenter",
            "Remove a center (refused while it has reservations to come)",
            None,
            status=204,
            path_params=("name",),
            **ADMIN,
        ),
    }

    async def get(self, name: str) -> None:
        self.require_admin()
        self.write_json((await self.db.run(partial(show_center, name=name))).as_json())

    async def patch(self, name: str) -> None:
        admin = self.require_admin()
        change = self.parse_body(CenterChange)
        view = await self.db.run(
            partial(change_center, name=name, change=change, actor=admin.username, client_ip=self.client_ip)
        )
        self.write_json(view.as_json())

    async def delete(self, name: str) -> None:
        admin = self.require_admin()
        await self.db.run(
            partial(delete_center, name=name, actor=admin.username, client_ip=self.client_ip, now=utcnow())
        )
        self.set_status(204)
        self.finish()


class OccupancyAdminAPIHandler(AdminAPIHandler):
    openapi = {
        "get": Operation(
            "getOccupancy",
            "A center's booked seats on one local day",
            OCCUPANCY,
            query=OccupancyQuery,
            path_params=("name",),
            **ADMIN,
        )
    }

    async def get(self, name: str) -> None:
        self.require_admin()
        query = self.parse_query(OccupancyQuery)
        center = await self.db.run(partial(show_center, name=name))
        day = query.day or utcnow().astimezone(center.tz).date()
        self.write_json((await self.db.run(partial(occupancy, name=name, day=day))).as_json())


class CentersAPIHandler(APIHandler):
    openapi = {
        "get": Operation(
            "listCentersToBook",
            "The centers a user may book a seat at",
            obj("centers", centers=array(CENTER_PUBLIC)),
            tags=("centers",),
        )
    }

    async def get(self) -> None:
        self.require_user()
        centers = await self.db.run(list_centers)
        public = (
            "name",
            "name_ko",
            "name_en",
            "address",
            "time_zone",
            "opening_hours",
            "seats",
            "booking_policy",
        )
        self.write_json({"centers": [{key: c.as_json()[key] for key in public} for c in centers]})


class HereAPIHandler(APIHandler):
    openapi = {
        "get": Operation(
            "whereAmI",
            "The center and network zone of the client's address (nulls: not at a center)",
            HERE,
            tags=("centers",),
        )
    }

    async def get(self) -> None:
        self.require_user()
        reservations: Reservations = self.settings["reservations"]
        arrival = await reservations.arrival(self.client_ip, self.device_certificate())
        if arrival is None:
            self.write_json({"center": None, "zone": None})
            return
        center = arrival.center
        self.write_json(
            {
                "center": center.name,
                "name_ko": center.name_ko,
                "name_en": center.name_en,
                "zone": arrival.zone,
            }
        )


class TerminalsAdminAPIHandler(AdminAPIHandler):
    openapi = {
        "get": Operation(
            "listTerminals",
            "A center's registered terminals",
            obj("terminals", terminals=array(TERMINAL)),
            path_params=("name",),
            links={
                "removeTerminal": {
                    "name": "$request.path.name",
                    "terminal": "$response.body#/terminals/0/name",
                }
            },
            **ADMIN,
        ),
        "post": Operation(
            "addTerminal",
            "Register a terminal by its address or its device certificate",
            TERMINAL,
            status=201,
            body=NewTerminal,
            path_params=("name",),
            links={"removeTerminal": {"name": "$request.path.name", "terminal": "$response.body#/name"}},
            **ADMIN,
        ),
    }

    async def get(self, name: str) -> None:
        self.require_admin()
        terminals = await self.db.run(partial(list_terminals, center=name))
        self.write_json({"terminals": [t.as_json() for t in terminals]})

    async def post(self, name: str) -> None:
        admin = self.require_admin()
        new = self.parse_body(NewTerminal)
        view = await self.db.run(
            partial(add_terminal, center=name, new=new, actor=admin.username, client_ip=self.client_ip)
        )
        self.write_json(view.as_json(), status=201)


class TerminalAdminAPIHandler(AdminAPIHandler):
    openapi = {
        "delete": Operation(
            "removeTerminal",
            "Remove a registered terminal",
            None,
            status=204,
            path_params=("name", "terminal"),
            **ADMIN,
        )
    }

    async def delete(self, name: str, terminal: str) -> None:
        admin = self.require_admin()
        await self.db.run(
            partial(
                remove_terminal, center=name, name=terminal, actor=admin.username, client_ip=self.client_ip
            )
        )
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/api/v1/admin/centers", CentersAdminAPIHandler),
    (rf"/api/v1/admin/centers/({CENTER_NAME})", CenterAdminAPIHandler),
    (rf"/api/v1/admin/centers/({CENTER_NAME})/occupancy", OccupancyAdminAPIHandler),
    (rf"/api/v1/admin/centers/({CENTER_NAME})/terminals", TerminalsAdminAPIHandler),
    (rf"/api/v1/admin/centers/({CENTER_NAME})/terminals/({TERMINAL_NAME})", TerminalAdminAPIHandler),
    (r"/api/v1/centers", CentersAPIHandler),
    (r"/api/v1/centers/here", HereAPIHandler),
]
