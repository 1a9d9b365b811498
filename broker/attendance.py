"""Check-in and attendance (근태) at smart work centers, derived from desktop sessions.

A session opened from a center terminal records its center (`sessions.center`, set when the session is
made). A user's first session of a local day at a center is the check-in (audited, counted); their day's
record is derived from that day's sessions there, never kept as a second truth:

- checked in: the start of the first session; checked out: the end of the last, once none is active;
- total: the time covered by the sessions (overlaps counted once; an active session up to now);
- seat: the user's reservation at that center covering the check-in.

An administrator's correction (with a reason, audited) replaces the check-in and check-out of one user's
day at one center. Records export as CSV in UTF-8 with a byte order mark, so Excel opens Korean names
intact, and as JSON for the home agency's system.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import errors
from broker.centers import CenterView, arrival_at, list_centers, load_center
from broker.db.models import AttendanceCorrection, AuditEvent, DesktopSession, SeatReservation, User, utcnow
from broker.reservations import plausible_time, seat_label
from monitoring.metrics import CENTER_CHECK_INS

log = logging.getLogger(__name__)

MAX_RANGE_DAYS = 366
BOM = "\ufeff"


class CorrectionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=128)
    center: str = Field(min_length=1, max_length=64)
    day: dt.date
    checked_in_at: AwareDatetime
    checked_out_at: AwareDatetime | None = None
    reason: str = Field(min_length=3, max_length=512)

    @field_validator("day")
    @classmethod
    def _plausible_day(cls, value: dt.date) -> dt.date:
        if not 2000 <= value.year <= 2999:
            raise ValueError("must be in the years 2000 to 2999")
        return value

    _plausible = field_validator("checked_in_at", "checked_out_at")(plausible_time)

    @field_validator("checked_out_at")
    @classmethod
    def _in_before_out(cls, value: dt.datetime | None, info: ValidationInfo) -> dt.datetime | None:
        checked_in = info.data.get("checked_in_at")
        if value is not None and checked_in is not None and value <= checked_in:
            raise ValueError("must be after checked_in_at")
        return value


@dataclass(frozen=True)
class AttendanceRecord:
    day: dt.date
    username: str
    display_name: str
    center: CenterView
    seat: str
    checked_in_at: dt.datetime
    checked_out_at: dt.datetime | None
    total_s: int
    correction_reason: str | None = None

    def as_json(self) -> dict:
        return {
            "day": self.day.isoformat(),
            "username": self.username,
            "display_name": self.display_name,
            "center": self.center.name,
            "center_name_ko": self.center.name_ko,
            "seat": self.seat,
            "checked_in_at": self.checked_in_at.isoformat(),
            "checked_out_at": self.checked_out_at.isoformat() if self.checked_out_at else None,
            "total_minutes": self.total_s // 60,
            "corrected": self.correction_reason is not None,
            "correction_reason": self.correction_reason,
        }


# -- check-in (in open_session's transaction) ---------------------------------------------------


def _local_day_bounds(day: dt.date, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    begin = dt.datetime.combine(day, dt.time(0), tz)
    return begin, dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tz)


def record_arrival(
    db: Session, session: DesktopSession, client_ip: str, device_sha256: str | None = None
) -> bool:
    """Give a new session the center its client is at (by address, else by a registered terminal's
    device certificate); True when that is the day's check-in."""
    if session.center is not None:
        return False
    arrival = arrival_at(db, client_ip, device_sha256)
    if arrival is None:
        return False
    center = arrival.center
    begin, end = _local_day_bounds(session.started_at.astimezone(center.tz).date(), center.tz)
    earlier = db.scalars(
        select(DesktopSession.id).where(
            DesktopSession.username == session.username,
            DesktopSession.center == center.name,
            DesktopSession.started_at >= begin,
            DesktopSession.started_at < end,
        )
    ).first()
    session.center = center.name
    if earlier is not None:
        return False
    db.add(
        AuditEvent(
            actor=session.username,
            action="attendance.check_in",
            result="success",
            target=center.name,
            source_ip=client_ip,
            detail={"session": session.id},
        )
    )
    CENTER_CHECK_INS.inc()
    log.info("check-in: user=%s center=%s", session.username, center.name)
    return True


# -- daily records ------------------------------------------------------------------------------


def _covered_s(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    """Seconds covered by the intervals, overlaps counted once."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is not None and start < reach:
            start = reach
        if end > start:
            total += (end - start).total_seconds()
        reach = max(reach or end, end)
    return int(total)


def _seat_at(db: Session, username: str, center: str, at: dt.datetime) -> str:
    row = db.scalars(
        select(SeatReservation)
        .where(
            SeatReservation.username == username,
            SeatReservation.center == center,
            SeatReservation.starts_at <= at,
            SeatReservation.ends_at > at,
        )
        .order_by(SeatReservation.state)  # "booked" before "cancelled"
    ).first()
    return seat_label(row.zone, row.seat) if row else ""


def _group_sessions(
    db: Session, centers: dict[str, CenterView], first: dt.date, last: dt.date, username: str | None
) -> dict[tuple[dt.date, str, str], list[DesktopSession]]:
    widest_begin = dt.datetime.combine(first - dt.timedelta(days=1), dt.time(0), dt.UTC)
    widest_end = dt.datetime.combine(last + dt.timedelta(days=2), dt.time(0), dt.UTC)
    query = select(DesktopSession).where(
        DesktopSession.center.in_(list(centers)),
        DesktopSession.started_at >= widest_begin,
        DesktopSession.started_at < widest_end,
    )
    if username is not None:
        query = query.where(DesktopSession.username == username)
    days: dict[tuple[dt.date, str, str], list[DesktopSession]] = {}
    for session in db.scalars(query):
        day = session.started_at.astimezone(centers[session.center].tz).date()
        if first <= day <= last:
            days.setdefault((day, session.username, session.center), []).append(session)
    return days


def _derived(sessions: list[DesktopSession], now: dt.datetime) -> tuple[dt.datetime, dt.datetime | None, int]:
    checked_in = min(s.started_at for s in sessions)
    active = any(s.ended_at is None for s in sessions)
    checked_out = None if active else max(s.ended_at for s in sessions)
    total = _covered_s([(s.started_at, s.ended_at or now) for s in sessions])
    return checked_in, checked_out, total


def daily_records(
    db: Session,
    first: dt.date,
    last: dt.date,
    center: str | None = None,
    username: str | None = None,
) -> list[AttendanceRecord]:
    """Each user's day at each center from `first` to `last` (local days, inclusive), corrections applied."""
    if last < first:
        raise errors.InvalidField("to: before from", field="to")
    if (last - first).days >= MAX_RANGE_DAYS:
        raise errors.InvalidField(f"to: at most {MAX_RANGE_DAYS} days from `from`", field="to")
    if center is not None:
        load_center(db, center)
    centers = {c.name: c for c in list_centers(db) if center is None or c.name == center}
    now = utcnow()
    found = {
        key: _derived(sessions, now)
        for key, sessions in _group_sessions(db, centers, first, last, username).items()
    }
    reasons = {}
    for fix in _corrections(db, centers, first, last, username):
        key = (dt.date.fromisoformat(fix.day), fix.username, fix.center)
        span = [(fix.checked_in_at, fix.checked_out_at)] if fix.checked_out_at else []
        found[key] = (fix.checked_in_at, fix.checked_out_at, _covered_s(span))
        reasons[key] = fix.reason
    names = _display_names(db, {key[1] for key in found})
    records = [
        AttendanceRecord(
            key[0],
            key[1],
            names.get(key[1], ""),
            centers[key[2]],
            _seat_at(db, key[1], key[2], checked_in),
            checked_in,
            checked_out,
            total,
            reasons.get(key),
        )
        for key, (checked_in, checked_out, total) in found.items()
    ]
    return sorted(records, key=lambda r: (r.day, r.center.name, r.username))


def _corrections(db: Session, centers: dict, first: dt.date, last: dt.date, username: str | None):
    query = select(AttendanceCorrection).where(
        AttendanceCorrection.center.in_(list(centers)),
        AttendanceCorrection.day >= first.isoformat(),
        AttendanceCorrection.day <= last.isoformat(),
    )
    if username is not None:
        query = query.where(AttendanceCorrection.username == username)
    return db.scalars(query).all()


def _display_names(db: Session, usernames: set[str]) -> dict[str, str]:
    rows = db.execute(select(User.username, User.display_name).where(User.username.in_(usernames)))
    return dict(rows.all())


def correct(db: Session, request: CorrectionRequest, actor: str, client_ip: str) -> AttendanceRecord:
    """Replace one user's day at one center by an administrator's figures; audited with the reason."""
    center = CenterView.of(load_center(db, request.center))
    row = db.scalars(
        select(AttendanceCorrection).where(
            AttendanceCorrection.username == request.username,
            AttendanceCorrection.center == center.name,
            AttendanceCorrection.day == request.day.isoformat(),
        )
    ).first()
    before = daily_records(db, request.day, request.day, center.name, request.username)
    if row is None:
        row = AttendanceCorrection(username=request.username, center=center.name, day=request.day.isoformat())
        db.add(row)
    row.checked_in_at = request.checked_in_at
    row.checked_out_at = request.checked_out_at
    row.reason = request.reason
    row.actor = actor[:128]
    row.corrected_at = utcnow()
    db.add(
        AuditEvent(
            actor=actor[:128],
            action="attendance.correct",
            result="success",
            target=f"{center.name}/{request.username}/{request.day.isoformat()}",
            source_ip=client_ip,
            detail={
                "reason": request.reason,
                "before": before[0].as_json() if before else None,
                "checked_in_at": request.checked_in_at.isoformat(),
                "checked_out_at": request.checked_out_at.isoformat() if request.checked_out_at else None,
            },
        )
    )
    db.flush()
    (record,) = daily_records(db, request.day, request.day, center.name, request.username)
    return record


# -- CSV ------------------------------------------------------------------------------------------

CSV_HEADERS = {
    "ko": ["날짜", "사용자 ID", "이름", "센터", "좌석", "입실", "퇴실", "이용 시간(분)", "정정 사유"],
    "en": [
        "Date",
        "User ID",
        "Name",
        "Center",
        "Seat",
        "Check-in",
        "Check-out",
        "Total (minutes)",
        "Correction",
    ],
}


def _cell(value: object) -> object:
    """A text that a spreadsheet would run as a formula (=, +, -, @) is quoted as text (OWASP: CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def as_csv(records: list[AttendanceRecord], lang: str) -> bytes:
    """UTF-8 with a byte order mark: Excel then reads Korean as Korean, not as mojibake."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180 line ends
    writer.writerow(CSV_HEADERS.get(lang, CSV_HEADERS["en"]))
    for r in records:
        tz = r.center.tz
        writer.writerow(
            _cell(value)
            for value in [
                r.day.isoformat(),
                r.username,
                r.display_name,
                r.center.display_name(lang),
                r.seat,
                r.checked_in_at.astimezone(tz).strftime("%H:%M"),
                r.checked_out_at.astimezone(tz).strftime("%H:%M") if r.checked_out_at else "",
                r.total_s // 60,
                r.correction_reason or "",
            ]
        )
    return (BOM + out.getvalue()).encode("utf-8")
