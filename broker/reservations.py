"""Seat reservations at smart work centers: booking, cancelling, occupancy, and a seat at login.

Time is cut into slots of SLOT_MINUTES. A reservation holds one seat of one zone for a range of whole
slots, and owns one `seat_slots` row per slot. That table's primary key (center, zone, seat, slot) is the
guarantee against double booking: of two bookings writing the same seat, only one commits, whatever the
database.

A center's bookings are taken one at a time (`lock_center`): a booking locks its center's row before it
reads the free seats, so when many arrive at once (9 o'clock at a center, on one broker or several) each
sees the seats the ones before it took, and takes the lowest seat still free; none chooses a seat another
is taking. Only a writer that skips the lock (a broker of an older version during an upgrade) can still
take the chosen seat first: then the primary key refuses the second, which reads again and takes another
(`ATTEMPTS`), counted as `race_lost`.

At a center terminal (the client address is on one of the center's terminal networks) a login needs a
seat: the user's booking for now, or under the `walk_in` policy a free seat given on the spot for
`walk_in_minutes` (up to closing). Otherwise the login is refused with the reason and the next free time.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker import errors
from broker.centers import Arrival, CenterView, UnknownCenter, arrival_at, load_center
from broker.db import Database
from broker.db.models import AuditEvent, Center, SeatReservation, SeatSlot, utcnow
from broker.terminals import DeviceCertificates, TerminalView, fingerprint, identify
from monitoring.metrics import (
    CENTER_LOGINS_REFUSED,
    SEAT_BOOKINGS,
    CenterLoginRefusal,
    SeatBookingResult,
)

log = logging.getLogger(__name__)

SLOT_MINUTES = 30
SLOT = dt.timedelta(minutes=SLOT_MINUTES)
MAX_BOOKING = dt.timedelta(hours=24)
BOOKING_HORIZON = dt.timedelta(days=60)  # how far ahead a seat can be booked
NEXT_FREE_SEARCH = dt.timedelta(days=14)  # how far ahead a refusal looks for the next free time
ATTEMPTS = 5  # a booking that lost its seat to a writer outside the center lock tries another this often


# -- errors --------------------------------------------------------------------------------------


class UnknownReservation(errors.NotFound):
    reason = "unknown_reservation"
    message = "There is no such reservation."


class NoFreeSeat(errors.Conflict):
    reason = "no_free_seat"
    message = "No seat is free for this time."


class AlreadyBooked(errors.Conflict):
    reason = "already_booked"
    message = "You already have a seat booked for part of this time."


class CenterLoginRefused(errors.LoginRefused):
    """A login at a center terminal without a seat; the message names the next free time."""

    status = 403

    def __init__(self, message: str, next_free: str, center: CenterView) -> None:
        super().__init__(message)
        # Both names, so each language's text names the center in its own words.
        self.params = {"next_free": next_free, "center_ko": center.name_ko, "center_en": center.name_en}


class BookingRequired(CenterLoginRefused):
    reason = "booking_required"


class CenterClosed(CenterLoginRefused):
    reason = "center_closed"


class CenterFull(CenterLoginRefused):
    reason = "no_free_seat"


class UnregisteredTerminal(CenterLoginRefused):
    reason = "unregistered_terminal"


class TerminalCertificateRefused(UnregisteredTerminal):
    """A registered terminal whose device certificate is revoked (or fails its checks): as unregistered."""

    reason = "terminal_certificate_refused"

    def __init__(self, center: CenterView, why: str) -> None:
        super().__init__(f"The device certificate of this terminal is refused: {why}.", "", center)
        self.why = why


class SeatRaceLost(Exception):
    """The chosen seat was booked by a concurrent transaction that did not hold the center lock; choose
    again."""


# -- request bodies ------------------------------------------------------------------------------


def plausible_time(value: dt.datetime | None) -> dt.datetime | None:
    """Years 2000-2999 only: arithmetic on a date near year 1 or 9999 would overflow (a 400, not a 500)."""
    if value is not None and not 2000 <= value.year <= 2999:
        raise ValueError("must be in the years 2000 to 2999")
    return value


class BookingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    center: str = Field(min_length=1, max_length=64)
    zone: Literal["business", "internet"] = "business"
    starts_at: AwareDatetime
    ends_at: AwareDatetime

    _plausible = field_validator("starts_at", "ends_at")(plausible_time)


# -- time ------------------------------------------------------------------------------------------


def slot_floor(at: dt.datetime) -> dt.datetime:
    at = at.astimezone(dt.UTC)
    return at.replace(minute=at.minute - at.minute % SLOT_MINUTES, second=0, microsecond=0)


def slots(starts_at: dt.datetime, ends_at: dt.datetime) -> list[dt.datetime]:
    count = int((ends_at - starts_at) / SLOT)
    return [starts_at.astimezone(dt.UTC) + i * SLOT for i in range(count)]


def _on_slot(at: dt.datetime) -> bool:
    return slot_floor(at) == at.astimezone(dt.UTC)


def check_range(
    center: CenterView, zone: str, starts_at: dt.datetime, ends_at: dt.datetime, now: dt.datetime
) -> None:
    """A booking's range: in whole slots, not in the past, within one day's opening hours; 400 naming the field."""
    for field, at in (("starts_at", starts_at), ("ends_at", ends_at)):
        if not _on_slot(at):
            raise errors.InvalidField(f"{field}: must be on a {SLOT_MINUTES}-minute boundary", field=field)
    if ends_at <= starts_at:
        raise errors.InvalidField("ends_at: must be after starts_at", field="ends_at")
    if ends_at - starts_at > MAX_BOOKING:
        raise errors.InvalidField("ends_at: a booking is at most 24 hours", field="ends_at")
    if starts_at < slot_floor(now):
        raise errors.InvalidField("starts_at: is in the past", field="starts_at")
    if starts_at > now + BOOKING_HORIZON:
        raise errors.InvalidField("starts_at: at most 60 days ahead", field="starts_at")
    if center.seats.get(zone, 0) <= 0:
        raise errors.InvalidField(f"zone: center {center.name} has no {zone} seats", field="zone")
    hours = center.hours_on(starts_at.astimezone(center.tz).date())
    if hours is None or starts_at < hours[0] or starts_at >= hours[1]:
        raise errors.InvalidField("starts_at: outside the center's opening hours", field="starts_at")
    if ends_at > hours[1]:
        raise errors.InvalidField("ends_at: after the center closes", field="ends_at")


# -- views -----------------------------------------------------------------------------------------


def seat_label(zone: str, seat: int) -> str:
    """What a terminal's sticker says: B03 is business seat 3, I02 internet seat 2."""
    return f"{zone[0].upper()}{seat:02d}"


@dataclass(frozen=True)
class ReservationView:
    id: int
    center: str
    zone: str
    seat: int
    username: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    state: str
    kind: str

    @classmethod
    def of(cls, row: SeatReservation) -> ReservationView:
        return cls(
            row.id,
            row.center,
            row.zone,
            row.seat,
            row.username,
            row.starts_at,
            row.ends_at,
            row.state,
            row.kind,
        )

    @property
    def seat_label(self) -> str:
        return seat_label(self.zone, self.seat)

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "center": self.center,
            "zone": self.zone,
            "seat": self.seat_label,
            "username": self.username,
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "state": self.state,
            "kind": self.kind,
        }


# -- database work (in Database.run's worker thread) -----------------------------------------------


def _audit(
    db: Session, actor: str, action: str, result: str, target: str, client_ip: str, **detail: Any
) -> None:
    db.add(
        AuditEvent(
            actor=actor[:128], action=action, result=result, target=target, source_ip=client_ip, detail=detail
        )
    )


def _taken_seats(db: Session, center: str, zone: str, wanted: list[dt.datetime]) -> set[int]:
    query = select(SeatSlot.seat).where(
        SeatSlot.center == center, SeatSlot.zone == zone, SeatSlot.slot_start.in_(wanted)
    )
    return set(db.scalars(query.distinct()))


def _overlapping(
    db: Session, username: str, starts_at: dt.datetime, ends_at: dt.datetime
) -> SeatReservation | None:
    return db.scalars(
        select(SeatReservation).where(
            SeatReservation.username == username,
            SeatReservation.state == "booked",
            SeatReservation.starts_at < ends_at,
            SeatReservation.ends_at > starts_at,
        )
    ).first()


@dataclass(frozen=True)
class Booking:
    """What to book: who, where, when, and how the booking came about."""

    username: str
    center: str
    zone: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    kind: str = "booking"  # booking | walk_in


def lock_center(db: Session, name: str) -> Center:
    """The center's row, locked until the transaction ends: its bookings are taken one at a time.

    The first statement of a booking's transaction, before anything is read. PostgreSQL: SELECT … FOR NO
    KEY UPDATE, so a second booking at the same center waits here until the first commits, then (READ
    COMMITTED: each statement sees what is committed when it starts) reads the seats the first took.
    Bookings at other centers do not wait; FOR NO KEY UPDATE leaves the key share that rows referring to
    the center take alone. SQLite: pysqlite begins the transaction at the first write, and reads before it
    hold no lock, so two bookings could both read the same free seats and both write; an UPDATE as the
    first statement takes the database's one write lock at once (waiting `busy_timeout` for another writer)
    and the reads after it see every earlier commit. UnknownCenter without such a center.
    """
    if db.get_bind().dialect.name == "sqlite":
        db.execute(
            update(Center)
            .where(Center.name == name)
            .values(name_en=Center.name_en)
            .execution_options(synchronize_session=False)
        )
    query = select(Center).where(Center.name == name).with_for_update(key_share=True)
    row = db.scalars(query, execution_options={"populate_existing": True}).first()
    if row is None:
        load_center(db, name)  # raises UnknownCenter
    return row


def take_seat(db: Session, booking: Booking, center: Center) -> ReservationView | None:
    """Book the lowest free seat of `center` (locked by the caller: lock_center) for the whole range; None
    when every seat is taken.

    Raises SeatRaceLost when a writer that does not take the center lock took the chosen seat between
    reading and writing.
    """
    wanted = slots(booking.starts_at, booking.ends_at)
    taken = _taken_seats(db, booking.center, booking.zone, wanted)
    free = [seat for seat in range(1, int(center.seats.get(booking.zone, 0)) + 1) if seat not in taken]
    if not free:
        return None
    row = SeatReservation(
        center=booking.center,
        zone=booking.zone,
        seat=free[0],
        username=booking.username,
        starts_at=booking.starts_at,
        ends_at=booking.ends_at,
        kind=booking.kind,
    )
    try:
        db.add(row)
        db.flush()
        db.add_all(
            SeatSlot(center=row.center, zone=row.zone, seat=row.seat, slot_start=slot, reservation_id=row.id)
            for slot in wanted
        )
        db.flush()
    except IntegrityError:
        raise SeatRaceLost() from None
    return ReservationView.of(row)


def book(db: Session, booking: Booking, client_ip: str) -> ReservationView | None:
    """One attempt: lock the center, refuse a second booking of the same user at the same time, then take
    a seat."""
    center = lock_center(db, booking.center)
    mine = _overlapping(db, booking.username, booking.starts_at, booking.ends_at)
    if mine is not None:
        raise AlreadyBooked(
            f"You already have seat {seat_label(mine.zone, mine.seat)} at {mine.center} for part of this time.",
            field="starts_at",
        )
    view = take_seat(db, booking, center)
    if view is not None:
        _audit(
            db,
            booking.username,
            "seat.book",
            "success",
            f"{view.center}/{view.seat_label}",
            client_ip,
            kind=booking.kind,
            starts_at=view.starts_at.isoformat(),
            ends_at=view.ends_at.isoformat(),
        )
    return view


def cancel(
    db: Session, reservation_id: int, actor: str, admin: bool, client_ip: str, now: dt.datetime
) -> ReservationView:
    row = db.get(SeatReservation, reservation_id)
    if row is None or (row.username != actor and not admin):
        raise UnknownReservation(field="id")
    if row.state != "booked" or row.ends_at <= now:
        raise errors.Conflict("The reservation is already cancelled or over.", field="id")
    row.state = "cancelled"
    row.cancelled_at = now
    db.execute(delete(SeatSlot).where(SeatSlot.reservation_id == row.id))
    view = ReservationView.of(row)
    _audit(
        db,
        actor,
        "seat.cancel",
        "success",
        f"{row.center}/{view.seat_label}",
        client_ip,
        reservation=row.id,
        user=row.username,
    )
    return view


def reservations_of(db: Session, username: str, now: dt.datetime) -> list[ReservationView]:
    """A user's bookings that are not over yet, soonest first."""
    rows = db.scalars(
        select(SeatReservation)
        .where(
            SeatReservation.username == username,
            SeatReservation.state == "booked",
            SeatReservation.ends_at > now,
        )
        .order_by(SeatReservation.starts_at)
    )
    return [ReservationView.of(row) for row in rows]


def current_reservation(db: Session, center: str, username: str, now: dt.datetime) -> ReservationView | None:
    row = db.scalars(
        select(SeatReservation).where(
            SeatReservation.center == center,
            SeatReservation.username == username,
            SeatReservation.state == "booked",
            SeatReservation.starts_at <= now,
            SeatReservation.ends_at > now,
        )
    ).first()
    return None if row is None else ReservationView.of(row)


def seat_until(db: Session, center: str, username: str, now: dt.datetime) -> dt.datetime | None:
    """When the user's seat at `center` ends: the end of the booking covering now, or of the last of the
    bookings that follow it without a gap (a user who booked 9-12 and 12-14 keeps the seat until 14);
    None without a booking now."""
    current = current_reservation(db, center, username, now)
    if current is None:
        return None
    until = current.ends_at
    for row in db.scalars(
        select(SeatReservation)
        .where(
            SeatReservation.center == center,
            SeatReservation.username == username,
            SeatReservation.state == "booked",
            SeatReservation.starts_at >= until,
            SeatReservation.starts_at < until + MAX_BOOKING,
        )
        .order_by(SeatReservation.starts_at)
    ):
        if row.starts_at != until:
            break
        until = row.ends_at
    return until


def next_free(db: Session, center: CenterView, zone: str, after: dt.datetime) -> dt.datetime | None:
    """The first slot from `after` on, within opening hours, with a seat of `zone` free (None: none soon)."""
    capacity = center.seats.get(zone, 0)
    if capacity <= 0:
        return None
    start = slot_floor(after)
    rows = db.execute(
        select(SeatSlot.slot_start, SeatSlot.seat).where(
            SeatSlot.center == center.name,
            SeatSlot.zone == zone,
            SeatSlot.slot_start >= start,
            SeatSlot.slot_start < start + NEXT_FREE_SEARCH,
        )
    )
    used: dict[dt.datetime, int] = {}
    for slot_start, _seat in rows:
        used[slot_start] = used.get(slot_start, 0) + 1
    slot = start
    while slot < start + NEXT_FREE_SEARCH:
        if _open_at(center, slot) and used.get(slot, 0) < capacity:
            return slot
        slot += SLOT
    return None


def _open_at(center: CenterView, at: dt.datetime) -> bool:
    hours = center.hours_on(at.astimezone(center.tz).date())
    return hours is not None and hours[0] <= at < hours[1]


@dataclass(frozen=True)
class Occupancy:
    center: CenterView
    day: dt.date
    reservations: list[ReservationView]

    def as_json(self) -> dict:
        return {
            "center": self.center.name,
            "day": self.day.isoformat(),
            "seats": self.center.seats,
            "reservations": [r.as_json() for r in self.reservations],
        }


def occupancy(db: Session, name: str, day: dt.date) -> Occupancy:
    """A center's booked seats on one local day (for administrators)."""
    center = CenterView.of(load_center(db, name))
    begin = dt.datetime.combine(day, dt.time(0), center.tz)
    end = begin + dt.timedelta(days=1)
    rows = db.scalars(
        select(SeatReservation)
        .where(
            SeatReservation.center == name,
            SeatReservation.state == "booked",
            SeatReservation.starts_at < end,
            SeatReservation.ends_at > begin,
        )
        .order_by(SeatReservation.zone, SeatReservation.seat, SeatReservation.starts_at)
    )
    return Occupancy(center, day, [ReservationView.of(row) for row in rows])


# -- the service (on the event loop) ----------------------------------------------------------------


def at_center(db: Session, client_ip: str, device: bytes | None = None) -> bool:
    """Whether a login from `client_ip` (with the TLS client certificate `device`, DER) is at a center,
    where Reservations.gate decides; away from centers the gate admits without a word."""
    return arrival_at(db, client_ip, None if device is None else fingerprint(device)) is not None


class Reservations:
    """Books and cancels seats, and admits logins at center terminals (PortalAuth's seat gate).

    `device_check`: with `broker.tls_client_ca`, the revocation check of device certificates; a terminal
    known by its certificate is checked (OCSP, CRL) at each login, whatever the user's login method.
    """

    def __init__(self, db: Database, device_check: DeviceCertificates | None = None) -> None:
        self.db = db
        self.device_check = device_check

    async def book(self, request: BookingRequest, username: str, client_ip: str) -> ReservationView:
        now = utcnow()
        try:
            center = await self.db.run(lambda db: CenterView.of(load_center(db, request.center)))
        except UnknownCenter:
            # A field of the booking, not the resource of the path: 400, like the booking's other fields.
            raise errors.InvalidField(
                f"center: there is no center named {request.center}", field="center"
            ) from None
        check_range(center, request.zone, request.starts_at, request.ends_at, now)
        booking = Booking(username, center.name, request.zone, request.starts_at, request.ends_at)
        view = await self._take(booking, client_ip)
        if view is None:
            SEAT_BOOKINGS.labels(result=SeatBookingResult.FULL.value).inc()
            upcoming = await self.db.run(
                partial(next_free, center=center, zone=request.zone, after=request.starts_at)
            )
            raise self._full(center, upcoming, "starts_at")
        SEAT_BOOKINGS.labels(result=SeatBookingResult.BOOKED.value).inc()
        log.info("seat booked: user=%s center=%s seat=%s", username, center.name, view.seat_label)
        return view

    async def _take(self, booking: Booking, client_ip: str) -> ReservationView | None:
        for _attempt in range(ATTEMPTS):
            try:
                return await self.db.run(partial(book, booking=booking, client_ip=client_ip))
            except SeatRaceLost:
                SEAT_BOOKINGS.labels(result=SeatBookingResult.RACE_LOST.value).inc()
        raise NoFreeSeat("Too many bookings at once for this time; please try again.", field="starts_at")

    @staticmethod
    def _full(center: CenterView, upcoming: dt.datetime | None, field: str | None) -> NoFreeSeat:
        if upcoming is None:
            return NoFreeSeat(
                f"No seat is free at {center.name_en} for this time.", field=field, next_free=""
            )
        local = upcoming.astimezone(center.tz).strftime("%Y-%m-%d %H:%M")
        return NoFreeSeat(
            f"No seat is free at {center.name_en} for this time; the next free time is {local}.",
            field=field,
            next_free=local,
        )

    async def cancel(self, reservation_id: int, actor: str, admin: bool, client_ip: str) -> ReservationView:
        view = await self.db.run(
            partial(
                cancel,
                reservation_id=reservation_id,
                actor=actor,
                admin=admin,
                client_ip=client_ip,
                now=utcnow(),
            )
        )
        SEAT_BOOKINGS.labels(result=SeatBookingResult.CANCELLED.value).inc()
        return view

    async def mine(self, username: str) -> list[ReservationView]:
        return await self.db.run(partial(reservations_of, username=username, now=utcnow()))

    async def seat_now(self, center: str, username: str) -> ReservationView | None:
        return await self.db.run(partial(current_reservation, center=center, username=username, now=utcnow()))

    async def seat_until(self, center: str, username: str) -> dt.datetime | None:
        return await self.db.run(partial(seat_until, center=center, username=username, now=utcnow()))

    async def arrival(self, client_ip: str, device: bytes | None = None) -> Arrival | None:
        """The center a client is at: by its address, else by its device certificate (DER) when that is
        a registered terminal's."""
        digest = None if device is None else fingerprint(device)
        return await self.db.run(partial(arrival_at, address=client_ip, device_sha256=digest))

    # -- a login at a center terminal ----------------------------------------------------------

    async def admit(
        self, username: str, client_ip: str, device: bytes | None = None
    ) -> ReservationView | None:
        """The seat of a login from `client_ip` (with the TLS client certificate `device`): None away from
        centers; refused (audited) without a seat, or from a device the center's policy does not admit."""
        arrival = await self.arrival(client_ip, device)
        if arrival is None:
            return None
        now = utcnow()
        center = arrival.center
        try:
            terminal = await self.db.run(
                partial(identify, center=center.name, client_ip=client_ip, device=device)
            )
            self._check_unregistered(center, terminal)
            if terminal is not None and terminal.cert_sha256 and device is not None:
                await self._check_device(center, device)
            mine = await self.db.run(
                partial(current_reservation, center=center.name, username=username, now=now)
            )
            if mine is not None:
                return mine
            if terminal is None and center.unregistered_terminals == "limit":
                raise UnregisteredTerminal(
                    f"This device is not a registered terminal of {center.name_en}: only a booked seat admits it.",
                    "",
                    center,
                )
            return await self._walk_in(arrival, username, client_ip, now)
        except CenterLoginRefused as exc:
            await self._refused(username, client_ip, center, exc)
            raise

    async def gate(self, username: str, client_ip: str, device: bytes | None = None) -> dt.datetime | None:
        """PortalAuth's seat gate: admit the login (or refuse it), and answer when its seat ends (None away
        from centers): the portal session ends then, whatever page the terminal shows."""
        seat = await self.admit(username, client_ip, device)
        if seat is None:
            return None
        return await self.seat_until(seat.center, username) or seat.ends_at

    async def _check_device(self, center: CenterView, device: bytes) -> None:
        """Revocation of a registered terminal's certificate (chain and dates the TLS layer checked)."""
        why = None if self.device_check is None else await self.device_check.refusal(device)
        if why is not None:
            raise TerminalCertificateRefused(center, why)

    @staticmethod
    def _check_unregistered(center: CenterView, terminal: TerminalView | None) -> None:
        if terminal is None and center.unregistered_terminals == "refuse":
            raise UnregisteredTerminal(
                f"This device is not a registered terminal of {center.name_en}; use a center terminal.",
                "",
                center,
            )

    async def _walk_in(
        self, arrival: Arrival, username: str, client_ip: str, now: dt.datetime
    ) -> ReservationView:
        center, zone = arrival.center, arrival.zone
        hours = center.hours_on(now.astimezone(center.tz).date())
        if hours is None or not hours[0] <= now < hours[1]:
            local = await self._next_free_local(center, zone, now)
            raise CenterClosed(
                f"{center.name_en} is closed now; it next has a free seat at {local or 'no time soon'}.",
                next_free=local,
                center=center,
            )
        if center.booking_policy == "require_booking":
            local = await self._next_free_local(center, zone, now)
            raise BookingRequired(
                f"{center.name_en} needs a seat booked in advance; the next free time is {local or 'not soon'}.",
                next_free=local,
                center=center,
            )
        start = slot_floor(now)
        end = min(start + dt.timedelta(minutes=center.walk_in_minutes), hours[1])
        try:
            view = await self._take(Booking(username, center.name, zone, start, end, "walk_in"), client_ip)
        except AlreadyBooked:
            # The same user logging in at two terminals at once: the other login's walk-in is the seat.
            mine = await self.seat_now(center.name, username)
            if mine is None:
                raise
            return mine
        if view is None:
            # Read after the seats were found taken: the walk-ins that filled the center a moment ago
            # count, so the time named is when one of their seats comes free.
            upcoming = await self.db.run(partial(next_free, center=center, zone=zone, after=now))
            later = upcoming if upcoming is not None and upcoming > now else None
            local = "" if later is None else later.astimezone(center.tz).strftime("%Y-%m-%d %H:%M")
            raise CenterFull(self._full(center, later, None).message, local, center)
        SEAT_BOOKINGS.labels(result=SeatBookingResult.WALK_IN.value).inc()
        log.info("walk-in seat: user=%s center=%s seat=%s", username, center.name, view.seat_label)
        return view

    async def _next_free_local(self, center: CenterView, zone: str, now: dt.datetime) -> str:
        """The next time with a free seat of `zone`, in the center's local time ("" when none soon)."""
        upcoming = await self.db.run(partial(next_free, center=center, zone=zone, after=now))
        return "" if upcoming is None else upcoming.astimezone(center.tz).strftime("%Y-%m-%d %H:%M")

    async def _refused(
        self, username: str, client_ip: str, center: CenterView, exc: errors.BrokerError
    ) -> None:
        reason = CenterLoginRefusal(exc.reason if exc.reason != "center_closed" else "closed")
        CENTER_LOGINS_REFUSED.labels(reason=reason.value).inc()
        log.warning("login refused at center: user=%s center=%s reason=%s", username, center.name, exc.reason)
        why = getattr(exc, "why", None)
        await self.db.run(
            lambda db: _audit(
                db,
                username,
                "login",
                "failure",
                center.name,
                client_ip,
                method="seat",
                reason=exc.reason,
                next_free=exc.params.get("next_free", ""),
                **({"device_certificate": why} if why else {}),
            )
        )
