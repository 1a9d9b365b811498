"""Smart work centers (sites): where their terminals are, when they are open, and their seats per zone.

A center has a Korean and an English name, an address, a time zone, opening hours per weekday, the
networks (CIDRs) of its terminals, each on one network zone (`business`, 행정망, or `internet`), and a
number of seats per zone. A login's center is the center whose terminal network holds the client's
address (broker/web/client_address.py, which honours trusted proxies only); the portal shows it, and
seat reservations (broker/reservations.py) are made against it.

Administrators manage centers through /api/v1/admin/centers and `vdi center …`; every change is audited.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker import errors
from broker.db.models import AttendanceCorrection, AuditEvent, Center, SeatReservation, SeatSlot, Terminal

CENTER_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
ZONES = ("business", "internet")
Zone = Literal["business", "internet"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOURS = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")
POLICIES = ("walk_in", "require_booking")
# Paths under /admin/centers/ that are pages of their own, not centers.
RESERVED_NAMES = ("attendance", "transfers", "terminals")


class UnknownCenter(errors.NotFound):
    reason = "unknown_center"
    message = "There is no such center."


class CenterExists(errors.Conflict):
    reason = "center_exists"
    message = "A center with this name already exists."


class CenterInUse(errors.Conflict):
    reason = "center_in_use"
    message = "The center still has reservations to come; cancel them first."


# -- request bodies ------------------------------------------------------------------------------


class TerminalNetwork(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cidr: str = Field(max_length=64, description="network of the center's terminals, e.g. 10.20.0.0/24")
    zone: Zone = "business"

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not a network (CIDR)") from None


def _check_hours(hours: dict[str, str]) -> dict[str, str]:
    for day, span in hours.items():
        if day not in WEEKDAYS:
            raise ValueError(f"{day!r} is not a weekday ({', '.join(WEEKDAYS)})")
        match = HOURS.match(span)
        if match is None:
            raise ValueError(f"{day}: {span!r} is not HH:MM-HH:MM")
        opens, closes = span.split("-")
        if closes <= opens:
            raise ValueError(f"{day}: closes before it opens")
    return hours


class CenterChange(BaseModel):
    """Fields an administrator may change; unset fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name_ko: str | None = Field(None, min_length=1, max_length=128)
    name_en: str | None = Field(None, min_length=1, max_length=128)
    address: str | None = Field(None, max_length=512)
    time_zone: str | None = Field(None, max_length=64)
    opening_hours: dict[str, str] | None = None
    networks: list[TerminalNetwork] | None = Field(None, max_length=64)
    seats: dict[Zone, int] | None = None
    booking_policy: Literal["walk_in", "require_booking"] | None = None
    walk_in_minutes: int | None = Field(None, ge=30, le=24 * 60)
    unregistered_terminals: Literal["allow", "limit", "refuse"] | None = None
    kiosk_idle_s: int | None = Field(None, ge=5, le=24 * 3600)

    @field_validator("time_zone")
    @classmethod
    def _zone_known(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone (IANA name, e.g. Asia/Seoul)") from None
        if value not in available_timezones():
            raise ValueError(f"{value!r} is not a time zone (IANA name, e.g. Asia/Seoul)")
        return value

    @field_validator("opening_hours")
    @classmethod
    def _hours(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else _check_hours(value)

    @field_validator("seats")
    @classmethod
    def _seat_counts(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for zone, count in (value or {}).items():
            if not 0 <= count <= 10_000:
                raise ValueError(f"{zone}: between 0 and 10000 seats")
        return value


class NewCenter(CenterChange):
    name: str = Field(pattern=CENTER_NAME)
    name_ko: str = Field(min_length=1, max_length=128)
    name_en: str = Field(min_length=1, max_length=128)
    time_zone: str = "Asia/Seoul"

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise ValueError(f"{value!r} is reserved (a page of /admin/centers)")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> NewCenter:
        self.address = self.address or ""
        self.opening_hours = self.opening_hours if self.opening_hours is not None else {}
        self.networks = self.networks or []
        self.seats = self.seats or {}
        self.booking_policy = self.booking_policy or "walk_in"
        self.walk_in_minutes = self.walk_in_minutes or 120
        self.unregistered_terminals = self.unregistered_terminals or "allow"
        self.kiosk_idle_s = self.kiosk_idle_s or 600
        return self


def validated(model: type[BaseModel], data: dict) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.invalid_field(exc) from None


# -- views ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CenterView:
    """A center as the API, the CLI and the pages show it."""

    name: str
    name_ko: str
    name_en: str
    address: str
    time_zone: str
    opening_hours: dict[str, str]
    networks: list[dict]
    seats: dict[str, int]
    booking_policy: str
    walk_in_minutes: int
    unregistered_terminals: str = "allow"
    kiosk_idle_s: int = 600

    @classmethod
    def of(cls, row: Center) -> CenterView:
        return cls(
            row.name,
            row.name_ko,
            row.name_en,
            row.address,
            row.time_zone,
            dict(row.opening_hours or {}),
            [dict(n) for n in row.networks or []],
            {zone: int(row.seats.get(zone, 0)) for zone in ZONES},
            row.booking_policy,
            row.walk_in_minutes,
            row.unregistered_terminals,
            row.kiosk_idle_s,
        )

    def display_name(self, lang: str) -> str:
        return self.name_ko if lang == "ko" else self.name_en

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def hours_on(self, day: dt.date) -> tuple[dt.datetime, dt.datetime] | None:
        """Opening and closing of `day` (local calendar day) as aware datetimes, or None on a closed day."""
        span = self.opening_hours.get(WEEKDAYS[day.weekday()])
        if span is None:
            return None
        opens, closes = (_clock(day, text, self.tz) for text in span.split("-"))
        return opens, closes

    def zone_of(self, address: str) -> str | None:
        """The zone of the terminal network holding `address`, or None when it is not one of ours."""
        network = network_holding(address, self.networks)
        return None if network is None else network["zone"]

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "name_ko": self.name_ko,
            "name_en": self.name_en,
            "address": self.address,
            "time_zone": self.time_zone,
            "opening_hours": self.opening_hours,
            "networks": self.networks,
            "seats": self.seats,
            "booking_policy": self.booking_policy,
            "walk_in_minutes": self.walk_in_minutes,
            "unregistered_terminals": self.unregistered_terminals,
            "kiosk_idle_s": self.kiosk_idle_s,
        }


def _clock(day: dt.date, text: str, tz: ZoneInfo) -> dt.datetime:
    hour, minute = (int(part) for part in text.split(":"))
    if hour == 24:
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, minute), tz)
    return dt.datetime.combine(day, dt.time(hour, minute), tz)


@functools.lru_cache(maxsize=4096)
def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # Parsed once per address and network text (every login, connect and console token asks, with the
    # centers as the database has them now: only the parsing is kept, never the centers).
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


def network_holding(address: str, networks: list[dict]) -> dict | None:
    """The most specific of `networks` that holds `address` (None: none does, or no address)."""
    ip = _ip(address) if address else None
    if ip is None:
        return None
    holding = [n for n in networks if ip in _network(n["cidr"])]
    return max(holding, key=lambda n: _network(n["cidr"]).prefixlen, default=None)


@dataclass(frozen=True)
class Arrival:
    """Where a client address is: its center and the zone of the terminal network."""

    center: CenterView
    zone: str


# -- database work (in Database.run's worker thread) -----------------------------------------------


def audit_change(db: Session, actor: str, action: str, target: str, client_ip: str, **detail: Any) -> None:
    """The audit line of a successful change to a center or its terminals (the actor cut to the column's 128)."""
    db.add(
        AuditEvent(
            actor=actor[:128],
            action=action,
            result="success",
            target=target,
            source_ip=client_ip,
            detail=detail,
        )
    )


def list_centers(db: Session) -> list[CenterView]:
    return [CenterView.of(row) for row in db.scalars(select(Center).order_by(Center.name))]


def load_center(db: Session, name: str) -> Center:
    row = db.get(Center, name)
    if row is None:
        raise UnknownCenter(f"There is no center named {name}.", field="center", center=name)
    return row


def show_center(db: Session, name: str) -> CenterView:
    return CenterView.of(load_center(db, name))


def _check_networks_free(db: Session, name: str, networks: list[dict]) -> None:
    """A terminal network belongs to one center only: an address must name one center."""
    for other in db.scalars(select(Center).where(Center.name != name)):
        for mine in networks:
            for theirs in other.networks or []:
                if ipaddress.ip_network(mine["cidr"]).overlaps(ipaddress.ip_network(theirs["cidr"])):
                    raise errors.InvalidField(
                        f"networks: {mine['cidr']} overlaps {theirs['cidr']} of center {other.name}",
                        field="networks",
                    )


def _fields(change: CenterChange, only_set: bool = True) -> dict:
    """The columns to write: a change's fields that were given; a new center's every field, defaults too
    (the view of a new row is made before the database fills in its column defaults)."""
    values = change.model_dump(exclude_unset=only_set, exclude_none=True)
    if change.networks is not None:
        values["networks"] = [n.model_dump() for n in change.networks]
    return values


def insert_center(db: Session, new: NewCenter, actor: str, client_ip: str) -> CenterView:
    if db.get(Center, new.name) is not None:
        raise CenterExists(f"A center named {new.name} already exists.", field="name", center=new.name)
    values = _fields(new, only_set=False)
    _check_networks_free(db, new.name, values["networks"])
    row = Center(**values)
    db.add(row)
    audit_change(db, actor, "center.add", new.name, client_ip, **_audit_fields(values))
    return CenterView.of(row)


def change_center(db: Session, name: str, change: CenterChange, actor: str, client_ip: str) -> CenterView:
    row = load_center(db, name)
    values = _fields(change)
    if "networks" in values:
        _check_networks_free(db, name, values["networks"])
    for key, value in values.items():
        setattr(row, key, value)
    audit_change(db, actor, "center.change", name, client_ip, **_audit_fields(values))
    return CenterView.of(row)


def _audit_fields(values: dict) -> dict:
    return {key: value for key, value in values.items() if key != "name"}


def delete_center(db: Session, name: str, actor: str, client_ip: str, now: dt.datetime) -> None:
    row = load_center(db, name)
    coming = db.scalar(
        select(func.count())
        .select_from(SeatReservation)
        .where(
            SeatReservation.center == name,
            SeatReservation.state == "booked",
            SeatReservation.ends_at > now,
        )
    )
    if coming:
        raise CenterInUse(
            f"Center {name} still has {coming} reservation(s) to come; cancel them first.", center=name
        )
    reservations = select(SeatReservation.id).where(SeatReservation.center == name)
    db.execute(SeatSlot.__table__.delete().where(SeatSlot.reservation_id.in_(reservations)))
    for model in (Terminal, AttendanceCorrection):
        db.execute(model.__table__.delete().where(model.center == name))
    db.execute(SeatReservation.__table__.delete().where(SeatReservation.center == name))
    db.delete(row)
    audit_change(db, actor, "center.remove", name, client_ip)


def arrival_at(db: Session, address: str, device_sha256: str | None = None) -> Arrival | None:
    """The center and zone of a client: by its address on a center's terminal network (the most specific
    network wins), else by its device certificate (SHA-256 of the DER) registered as a center's terminal;
    None when neither says it is at a center."""
    by_network = _arrival_by_network(db, address)
    if by_network is not None or device_sha256 is None:
        return by_network
    center = db.scalar(select(Terminal.center).where(Terminal.cert_sha256 == device_sha256))
    return None if center is None else center_arrival(CenterView.of(load_center(db, center)))


def center_arrival(view: CenterView) -> Arrival:
    """At a center without a network to say the zone (a terminal known by its certificate alone, off the
    center's networks): the zone of the center's first terminal network, business if it lists none."""
    return Arrival(view, view.networks[0]["zone"] if view.networks else "business")


def _arrival_by_network(db: Session, address: str) -> Arrival | None:
    if _ip(address) is None:
        return None
    # Every center's networks as they are now, as plain rows: the center itself is read only when the
    # address is on one of its networks (most logins are not).
    best: tuple[int, str, str] | None = None
    for name, networks in db.execute(select(Center.name, Center.networks).order_by(Center.name)):
        network = network_holding(address, networks or [])
        if network is None:
            continue
        length = _network(network["cidr"]).prefixlen
        if best is None or length > best[0]:
            best = (length, name, network["zone"])
    if best is None:
        return None
    return Arrival(show_center(db, best[1]), best[2])
