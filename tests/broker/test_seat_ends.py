"""The seat's end at a center terminal, enforced by the broker whatever the terminal's page does: the
portal session opened there expires with the seat, and the seat-ends job signs the user out and cuts
the consoles of their desktop sessions at the center (cause seat_ended), leaving sessions elsewhere be."""

import datetime as dt
from functools import partial

from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent, utcnow
from broker.reservations import seat_until
from tests.fixtures.broker_api import signed_in
from tests.fixtures.centers import (
    AWAY_ADDRESS,
    CENTER_ADDRESS,
    add_center,
    book_until,
    connect_at,
    desktop_session,
    login_at,
)
from tests.fixtures.common import wait_until


def in_database(config, work):
    database = Database(config.database)
    try:
        with database.transaction() as session:
            return work(session)
    finally:
        database.close()


def test_a_portal_session_at_a_center_terminal_ends_with_its_seat(center_admin, centers_url, centers_config):
    add_center(center_admin)
    book_until(centers_config, "choijw", utcnow() + dt.timedelta(seconds=15))
    terminal, response = login_at(centers_url, "choijw", CENTER_ADDRESS)
    assert response.status == 200, response.text
    assert terminal.get("/api/v1/me").status == 200
    wait_until(
        lambda: terminal.get("/api/v1/me").status == 401, 30, "the portal session to end with the seat"
    )
    assert center_admin.get("/api/v1/me").status == 200  # a session away from the centers lives on


def test_bookings_without_a_gap_keep_the_seat_until_the_last_ends(center_admin, centers_config):
    add_center(center_admin)
    first_end = utcnow().replace(microsecond=0) + dt.timedelta(minutes=20)
    book_until(centers_config, "choijw", first_end)
    book_until(centers_config, "choijw", first_end + dt.timedelta(minutes=30), starts_at=first_end)
    book_until(  # after a gap: not part of this stay
        centers_config,
        "choijw",
        first_end + dt.timedelta(hours=2),
        starts_at=first_end + dt.timedelta(hours=1),
    )
    until = in_database(
        centers_config, partial(seat_until, center="seoul-station", username="choijw", now=utcnow())
    )
    assert until == first_end + dt.timedelta(minutes=30)
    assert (
        in_database(
            centers_config, partial(seat_until, center="seoul-station", username="kimmj", now=utcnow())
        )
        is None
    )


def test_the_seat_end_cuts_the_consoles_of_sessions_at_the_center(toy_centers_url, toy_centers_config):
    admin = signed_in(toy_centers_url, "kimmj")
    add_center(admin)
    away = connect_at(admin, "mois-office", AWAY_ADDRESS)  # another user, at home
    book_until(toy_centers_config, "choijw", utcnow() + dt.timedelta(seconds=15))
    terminal, response = login_at(toy_centers_url, "choijw", CENTER_ADDRESS)
    assert response.status == 200, response.text
    at_center = connect_at(terminal, "moef-office", CENTER_ADDRESS)
    assert desktop_session(toy_centers_config, at_center["session_id"]) == ("active", None)
    wait_until(
        lambda: desktop_session(toy_centers_config, at_center["session_id"]) == ("ended", "seat_ended"),
        30,
        "the console of the session at the center to be cut",
    )
    assert desktop_session(toy_centers_config, away["session_id"]) == ("active", None)
    (event,) = in_database(
        toy_centers_config,
        lambda db: db.scalars(select(AuditEvent).where(AuditEvent.action == "revoke_sessions")).all(),
    )
    assert (event.actor, event.target, event.detail["cause"]) == ("seat-end", "choijw", "seat_ended")
    assert event.detail["desktop_sessions"] == 1
