"""`vdi center add|change|remove|list|show|occupancy|terminal-add|terminal-remove|terminals|attendance|correct`:
smart work centers from the command line.

The same database work as /api/v1/admin/centers (broker/centers.py), audited with the operating-system
user as actor (`cli:<user>`); blocking, for the command line only.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

from broker import errors
from broker.attendance import CorrectionRequest, as_csv, correct, daily_records
from broker.centers import (
    CenterChange,
    NewCenter,
    change_center,
    delete_center,
    insert_center,
    list_centers,
    show_center,
    validated,
)
from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import utcnow
from broker.reservations import occupancy
from broker.terminals import NewTerminal, add_terminal, list_terminals, remove_terminal

SEOUL = ZoneInfo("Asia/Seoul")


def _cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def _pairs(items: list[str], field: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise errors.InvalidField(f"{field}: {item!r} is not KEY=VALUE", field=field)
        pairs[key] = value
    return pairs


def _networks(items: list[str]) -> list[dict]:
    """CIDR or CIDR=ZONE (zone business when not given)."""
    return [dict(zip(("cidr", "zone"), item.split("=", 1), strict=False)) for item in items]


def _fields(args) -> dict:
    fields: dict = {}
    keys = ("name_ko", "name_en", "address", "time_zone", "booking_policy", "walk_in_minutes")
    for key in (*keys, "unregistered_terminals", "kiosk_idle_s"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    if args.hours:
        fields["opening_hours"] = _pairs(args.hours, "opening_hours")
    if args.network:
        fields["networks"] = _networks(args.network)
    if args.seats:
        seats = _pairs(args.seats, "seats")
        try:
            fields["seats"] = {zone: int(count) for zone, count in seats.items()}
        except ValueError:
            raise errors.InvalidField("seats: counts are whole numbers (ZONE=COUNT)", field="seats") from None
    return fields


def _run(db: Database, args):
    actor, verb = _cli_actor(), args.center_command
    with db.transaction() as session:
        if verb == "list":
            return list_centers(session)
        if verb == "show":
            return show_center(session, args.name)
        if verb == "add":
            new = validated(NewCenter, {"name": args.name, **_fields(args)})
            return insert_center(session, new, actor, "")
        if verb == "change":
            return change_center(session, args.name, validated(CenterChange, _fields(args)), actor, "")
        if verb == "remove":
            delete_center(session, args.name, actor, "", utcnow())
            return f"center {args.name} removed"
        if verb == "terminal-add":
            fields = {"name": args.terminal, "address": args.address}
            if args.certificate:
                fields["certificate"] = Path(args.certificate).read_text()
            return add_terminal(session, args.name, validated(NewTerminal, fields), actor, "")
        if verb == "terminal-remove":
            remove_terminal(session, args.name, args.terminal, actor, "")
            return f"terminal {args.terminal} of {args.name} removed"
        if verb == "terminals":
            return list_terminals(session, args.name)
        if verb == "attendance":
            return _attendance(session, args)
        if verb == "correct":
            return correct(session, _correction(session, args), actor, "")
        center = show_center(session, args.name)
        day = dt.date.fromisoformat(args.day) if args.day else utcnow().astimezone(center.tz).date()
        return occupancy(session, args.name, day)


def _attendance(session, args):
    first = dt.date.fromisoformat(args.day_from) if args.day_from else utcnow().astimezone(SEOUL).date()
    last = dt.date.fromisoformat(args.day_to) if args.day_to else first
    records = daily_records(session, first, last, args.center, args.user)
    if args.csv:
        return as_csv(records, args.lang)
    return {"records": [r.as_json() for r in records]}


def _correction(session, args) -> CorrectionRequest:
    tz = show_center(session, args.center).tz
    day = dt.date.fromisoformat(args.day)

    def at(clock: str | None) -> str | None:
        if clock is None:
            return None
        hour, minute = (int(part) for part in clock.split(":"))
        return dt.datetime.combine(day, dt.time(hour, minute), tz).isoformat()

    fields = {"username": args.user, "center": args.center, "day": args.day, "reason": args.reason}
    return validated(
        CorrectionRequest,
        {**fields, "checked_in_at": at(args.checked_in), "checked_out_at": at(args.checked_out)},
    )


def _print(result, as_json: bool) -> None:
    if isinstance(result, bytes):
        sys.stdout.buffer.write(result)
        sys.stdout.flush()
    elif isinstance(result, dict):
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif isinstance(result, str):
        print(result)
    elif isinstance(result, list) and result and not hasattr(result[0], "seats"):
        print(json.dumps([t.as_json() for t in result], indent=2, ensure_ascii=False))
    elif isinstance(result, list) and not as_json:
        print(f"{'NAME':<20} {'BUSINESS':>8} {'INTERNET':>8}  {'POLICY':<16} NAME (KO)")
        for c in result:
            print(
                f"{c.name:<20} {c.seats['business']:>8} {c.seats['internet']:>8}  {c.booking_policy:<16} {c.name_ko}"
            )
    elif isinstance(result, list):
        print(json.dumps([c.as_json() for c in result], indent=2, ensure_ascii=False))
    else:
        print(json.dumps(result.as_json(), indent=2, ensure_ascii=False))


def run_center_command(config, args) -> int:
    """`vdi center ...`: blocking, for the command line only."""
    upgrade(config.database.url)
    db = Database(config.database)
    try:
        result = _run(db, args)
    except errors.BrokerError as exc:
        print(f"vdi center {args.center_command}: {exc.message}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2
    except ValueError as exc:
        print(f"vdi center {args.center_command}: day: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    _print(result, getattr(args, "json", False))
    return 0


def _center_fields(parser, adding: bool) -> None:
    parser.add_argument("name", help="center name (its short id), e.g. seoul")
    parser.add_argument("--name-ko", dest="name_ko", required=adding, help="the center's name in Korean")
    parser.add_argument("--name-en", dest="name_en", required=adding, help="the center's name in English")
    parser.add_argument("--address", help="postal address")
    parser.add_argument("--time-zone", dest="time_zone", help="IANA time zone (default Asia/Seoul)")
    parser.add_argument(
        "--hours",
        action="append",
        default=[],
        metavar="DAY=HH:MM-HH:MM",
        help="opening hours of a weekday (mon…sun)",
    )
    parser.add_argument(
        "--network",
        action="append",
        default=[],
        metavar="CIDR[=ZONE]",
        help="a network of the center's terminals, zone business (default) or internet; replaces the list",
    )
    parser.add_argument("--seats", action="append", default=[], metavar="ZONE=COUNT", help="seats of a zone")
    parser.add_argument(
        "--policy",
        dest="booking_policy",
        choices=("walk_in", "require_booking"),
        help="login without a booking",
    )
    parser.add_argument(
        "--unregistered",
        dest="unregistered_terminals",
        choices=("allow", "limit", "refuse"),
        help="a login from an unregistered device on a terminal network (limit: booked seats only)",
    )
    parser.add_argument(
        "--kiosk-idle-s", dest="kiosk_idle_s", type=int, help="kiosk sign-out after this idle"
    )
    parser.add_argument(
        "--walk-in-minutes",
        dest="walk_in_minutes",
        type=int,
        help="how long a walk-in seat is given (default 120)",
    )


def add_commands(sub) -> None:
    """The `vdi center` subcommands, added to the `vdi` parser."""
    center = sub.add_parser("center", help="smart work centers", description="smart work centers (sites)")
    center.set_defaults(fn=run_center_command, needs_config="full")
    verbs = center.add_subparsers(dest="center_command", required=True, metavar="ACTION")
    _center_fields(verbs.add_parser("add", help="add a center", description="add a center"), adding=True)
    _center_fields(
        verbs.add_parser("change", help="change a center", description="change a center"), adding=False
    )
    verbs.add_parser("remove", help="remove a center", description="remove a center").add_argument(
        "name", help="the center"
    )
    listing = verbs.add_parser("list", help="list centers", description="list centers")
    listing.add_argument("--json", action="store_true", help="print JSON")
    verbs.add_parser("show", help="one center as JSON", description="one center as JSON").add_argument(
        "name", help="the center"
    )
    seats = verbs.add_parser(
        "occupancy", help="a day's booked seats", description="a day's booked seats as JSON"
    )
    seats.add_argument("name", help="the center")
    seats.add_argument("--day", help="YYYY-MM-DD in the center's time zone (default today)")
    add_terminal_verb = verbs.add_parser(
        "terminal-add",
        help="register a center terminal",
        description="register a terminal by address or certificate",
    )
    add_terminal_verb.add_argument("name", help="the center")
    add_terminal_verb.add_argument("terminal", help="the terminal's name, e.g. seoul-b01")
    way = add_terminal_verb.add_mutually_exclusive_group(required=True)
    way.add_argument("--address", help="the terminal's IP address on a terminal network of the center")
    way.add_argument("--certificate", metavar="PEM_FILE", help="the terminal's device certificate")
    drop = verbs.add_parser(
        "terminal-remove", help="remove a terminal", description="remove a registered terminal"
    )
    drop.add_argument("name", help="the center")
    drop.add_argument("terminal", help="the terminal's name, as `vdi center terminals` shows it")
    verbs.add_parser(
        "terminals", help="a center's terminals", description="a center's terminals as JSON"
    ).add_argument("name", help="the center")
    records = verbs.add_parser(
        "attendance", help="daily attendance records", description="daily attendance records as JSON or CSV"
    )
    records.add_argument("--from", dest="day_from", help="first day, YYYY-MM-DD (default today)")
    records.add_argument("--to", dest="day_to", help="last day, YYYY-MM-DD (default: --from)")
    records.add_argument("--center", help="one center only")
    records.add_argument("--user", help="one user only")
    records.add_argument("--csv", action="store_true", help="CSV in UTF-8 with a byte order mark (Excel)")
    records.add_argument("--lang", choices=("ko", "en"), default="ko", help="CSV header language")
    fix = verbs.add_parser(
        "correct", help="correct a user's day (audited)", description="correct a user's day at a center"
    )
    fix.add_argument("center", help="the center")
    fix.add_argument("user", help="the user's directory login name (uid)")
    fix.add_argument("day", help="YYYY-MM-DD in the center's time zone")
    fix.add_argument("--in", dest="checked_in", required=True, metavar="HH:MM", help="check-in time")
    fix.add_argument("--out", dest="checked_out", metavar="HH:MM", help="check-out time")
    fix.add_argument("--reason", required=True, help="why (kept in the audit log)")
