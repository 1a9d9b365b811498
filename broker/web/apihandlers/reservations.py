"""/api/v1/reservations: a user's seat bookings at centers; /api/v1/admin/reservations/{id}: cancel any.

POST books the lowest free seat of the zone for the range (whole 30-minute slots, within the center's
opening hours); a taken range is 409 `no_free_seat` naming the next free time, bad input a 400 naming the
field, and nothing is stored either way (broker/reservations.py).
"""

from __future__ import annotations

from broker.reservations import BookingRequest, Reservations
from broker.web.apihandlers.base import AdminAPIHandler, APIHandler
from broker.web.openapi import RESERVATION, Operation, array, obj

# Ids are 32-bit integer columns: a longer number is no reservation (404), never a database error.
RESERVATION_ID = r"[0-9]{1,9}"


class ReservationsMixin:
    @property
    def reservations(self) -> Reservations:
        return self.settings["reservations"]


class ReservationsAPIHandler(ReservationsMixin, APIHandler):
    openapi = {
        "get": Operation(
            "listMyReservations",
            "My seat reservations",
            obj("reservations", reservations=array(RESERVATION)),
            tags=("centers",),
        ),
        "post": Operation(
            "bookSeat",
            "Book the lowest free seat of a zone for a range of whole 30-minute slots",
            RESERVATION,
            status=201,
            body=BookingRequest,
            tags=("centers",),
            links={
                op: {"reservation_id": "$response.body#/id"}
                for op in ("cancelReservation", "cancelAnyReservation")
            },
        ),
    }

    async def get(self) -> None:
        user = self.require_user()
        mine = await self.reservations.mine(user.username)
        self.write_json({"reservations": [r.as_json() for r in mine]})

    async def post(self) -> None:
        user = self.require_user()
        request = self.parse_body(BookingRequest)
        view = await self.reservations.book(request, user.username, self.client_ip)
        self.write_json(view.as_json(), status=201)


class ReservationAPIHandler(ReservationsMixin, APIHandler):
    openapi = {
        "delete": Operation(
            "cancelReservation",
            "Cancel my reservation",
            RESERVATION,
            path_params=("reservation_id",),
            tags=("centers",),
        )
    }

    async def delete(self, reservation_id: str) -> None:
        user = self.require_user()
        view = await self.reservations.cancel(int(reservation_id), user.username, False, self.client_ip)
        self.write_json(view.as_json())


class ReservationAdminAPIHandler(ReservationsMixin, AdminAPIHandler):
    openapi = {
        "delete": Operation(
            "cancelAnyReservation",
            "Cancel anyone's reservation",
            RESERVATION,
            auth="admin",
            path_params=("reservation_id",),
            tags=("centers",),
        )
    }

    async def delete(self, reservation_id: str) -> None:
        admin = self.require_admin()
        view = await self.reservations.cancel(int(reservation_id), admin.username, True, self.client_ip)
        self.write_json(view.as_json())


default_handlers = [
    (r"/api/v1/reservations", ReservationsAPIHandler),
    (rf"/api/v1/reservations/({RESERVATION_ID})", ReservationAPIHandler),
    (rf"/api/v1/admin/reservations/({RESERVATION_ID})", ReservationAdminAPIHandler),
]
