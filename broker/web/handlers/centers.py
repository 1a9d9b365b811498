"""Portal pages of smart work centers: where am I, and my seat bookings (/reservations).

A plain HTML form books a seat (no script needed, so it works with any assistive technology); the same
service as POST /api/v1/reservations checks it. Times are entered in the center's own time zone.
"""

from __future__ import annotations

import datetime as dt

import tornado.web
from pydantic import ValidationError

from broker import errors
from broker.centers import CenterView, list_centers
from broker.db.models import utcnow
from broker.reservations import SLOT_MINUTES, BookingRequest, Reservations
from broker.web.apihandlers.centers import parse_day
from broker.web.base import BaseHandler

DEFAULT_KIOSK_IDLE_S = 600
TIMES = [f"{minutes // 60:02d}:{minutes % 60:02d}" for minutes in range(0, 24 * 60 + 1, SLOT_MINUTES)]


def local_time(center: CenterView, day: str, clock: str, field: str) -> dt.datetime:
    """`day` (YYYY-MM-DD) at `clock` (HH:MM, 24:00 for midnight after) in the center's time zone."""
    date = parse_day(day, None)
    if date is None:
        raise errors.InvalidField("day: not a date (YYYY-MM-DD)", field="day")
    if clock not in TIMES:
        raise errors.InvalidField(f"{field}: not a time of the list", field=field)
    hour, minute = (int(part) for part in clock.split(":"))
    return dt.datetime.combine(date, dt.time(0), center.tz) + dt.timedelta(hours=hour, minutes=minute)


class CenterPageHandler(BaseHandler):
    @property
    def reservations(self) -> Reservations:
        return self.settings["reservations"]


class ReservationsPageHandler(CenterPageHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.remember_language()
        await self.render_page(
            booked=self.get_query_argument("booked", None),
            cancelled=self.get_query_argument("cancelled", None),
        )

    async def render_page(
        self, error: str | None = None, field: str | None = None, form: dict | None = None, **notes
    ) -> None:
        centers = await self.db.run(list_centers)
        arrival = await self.reservations.arrival(self.client_ip, self.device_certificate())
        mine = await self.reservations.mine(self.current_user.username)
        names = {c.name: c for c in centers}
        today = utcnow().astimezone(centers[0].tz).date().isoformat() if centers else ""
        form = form or {
            "center": arrival.center.name if arrival else (centers[0].name if centers else ""),
            "zone": arrival.zone if arrival else "business",
            "day": today,
            "starts": "09:00",
            "ends": "12:00",
        }
        self.render(
            "reservations.html",
            centers=centers,
            names=names,
            arrival=arrival,
            mine=mine,
            times=TIMES,
            form=form,
            error=error,
            error_field=field,
            notes={key: value for key, value in notes.items() if value},
        )

    @tornado.web.authenticated
    async def post(self) -> None:
        form = {
            key: self.get_body_argument(key, "")[:64] for key in ("center", "zone", "day", "starts", "ends")
        }
        try:
            view = await self._book(form)
        except errors.BrokerError as exc:
            self.set_status(exc.status)
            await self.render_page(error=self.localized_message(exc), field=exc.field, form=form)
            return
        self.redirect(f"/reservations?booked={view.id}", status=303)

    async def _book(self, form: dict):
        centers = {c.name: c for c in await self.db.run(list_centers)}
        center = centers.get(form["center"])
        if center is None:
            raise errors.InvalidField("center: choose a center of the list", field="center")
        try:
            request = BookingRequest(
                center=center.name,
                zone=form["zone"],
                starts_at=local_time(center, form["day"], form["starts"], "starts_at"),
                ends_at=local_time(center, form["day"], form["ends"], "ends_at"),
            )
        except ValidationError as exc:
            raise errors.invalid_field(exc) from None
        return await self.reservations.book(request, self.current_user.username, self.client_ip)


class CancelReservationHandler(CenterPageHandler):
    @tornado.web.authenticated
    async def post(self, reservation_id: str) -> None:
        await self.reservations.cancel(int(reservation_id), self.current_user.username, False, self.client_ip)
        self.redirect(f"/reservations?cancelled={reservation_id}", status=303)


class KioskHandler(CenterPageHandler):
    """The full-screen page of a center terminal: who sits where until when; it signs the user out after
    the center's `kiosk_idle_s` without input, or when the seat's booking ends, and returns to sign-in."""

    @tornado.web.authenticated
    async def get(self) -> None:
        self.remember_language()
        arrival = await self.reservations.arrival(self.client_ip, self.device_certificate())
        seat = until = None
        if arrival is not None:
            username = self.current_user.username
            seat = await self.reservations.seat_now(arrival.center.name, username)
            until = await self.reservations.seat_until(arrival.center.name, username)
        idle_s = arrival.center.kiosk_idle_s if arrival else DEFAULT_KIOSK_IDLE_S
        # The time left, not the clock time: a terminal's clock may be wrong, the broker's is the truth.
        ends_in_ms = None if until is None else max(0, int((until - utcnow()).total_seconds() * 1000))
        self.render(
            "kiosk.html", arrival=arrival, seat=seat, until=until, ends_in_ms=ends_in_ms, idle_s=idle_s
        )


default_handlers = [
    (r"/kiosk", KioskHandler),
    (r"/reservations", ReservationsPageHandler),
    (r"/reservations/([0-9]{1,9})/cancel", CancelReservationHandler),
]
