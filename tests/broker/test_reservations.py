"""Seat reservations: booking and cancelling through /api/v1/reservations, bad input, no double booking
(also under concurrency, on SQLite and PostgreSQL), occupancy, and a seat at a login at a center terminal."""

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.exc import IntegrityError

from broker.db import Database
from broker.db.models import AuditEvent, SeatReservation, SeatSlot
from sso.base import Identity
from tests.fixtures.broker import (
    IDENTITIES,
    TEST_IMAGE,
    BrokerClient,
    FakeAuthenticator,
    UnreachableProvider,
)
from tests.fixtures.broker_api import signed_in
from tests.fixtures.centers import (
    ALWAYS_OPEN,
    AWAY_ADDRESS,
    CENTER_ADDRESS,
    INTERNET_ADDRESS,
    SEOUL,
    add_center,
    booking,
    login_at,
    stored,
    tomorrow_at,
)


def metric(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_book_list_and_cancel_a_seat(center_admin, centers_config):
    add_center(center_admin)
    response = center_admin.post("/api/v1/reservations", json=booking(tomorrow_at(9), tomorrow_at(12)))
    assert response.status == 201, response.text
    booked = response.json()
    assert (booked["seat"], booked["zone"], booked["state"]) == ("B01", "business", "booked")
    assert len(stored(centers_config, SeatSlot)) == 6  # three hours of 30-minute slots
    mine = center_admin.get("/api/v1/reservations").json()["reservations"]
    assert [r["id"] for r in mine] == [booked["id"]]
    cancelled = center_admin.request("DELETE", f"/api/v1/reservations/{booked['id']}")
    assert cancelled.status == 200 and cancelled.json()["state"] == "cancelled"
    assert stored(centers_config, SeatSlot) == []
    assert center_admin.get("/api/v1/reservations").json()["reservations"] == []
    actions = [e.action for e in stored(centers_config, AuditEvent, AuditEvent.action.like("seat.%"))]
    assert actions == ["seat.book", "seat.cancel"]


def test_a_second_booking_of_the_last_seat_is_refused_with_the_next_free_time(
    center_admin, centers_url, centers_config
):
    add_center(center_admin, seats={"business": 1, "internet": 0})
    assert (
        center_admin.post("/api/v1/reservations", json=booking(tomorrow_at(9), tomorrow_at(12))).status == 201
    )
    other = signed_in(centers_url, "choijw")
    before = metric("vdi_seat_bookings_total", result="full")
    response = other.post("/api/v1/reservations", json=booking(tomorrow_at(11), tomorrow_at(13)))
    assert response.status == 409 and response.json()["error"]["reason"] == "no_free_seat"
    assert response.json()["error"]["field"] == "starts_at"
    assert f"{tomorrow_at(12):%Y-%m-%d} 12:00" in response.json()["error"]["message"]
    assert metric("vdi_seat_bookings_total", result="full") == before + 1
    assert len(stored(centers_config, SeatReservation)) == 1  # the refused booking stored nothing
    # Right after the first booking ends, the seat is free.
    assert other.post("/api/v1/reservations", json=booking(tomorrow_at(12), tomorrow_at(13))).status == 201


def test_the_same_user_cannot_hold_two_seats_at_once(center_admin):
    add_center(center_admin)
    assert (
        center_admin.post("/api/v1/reservations", json=booking(tomorrow_at(9), tomorrow_at(12))).status == 201
    )
    response = center_admin.post("/api/v1/reservations", json=booking(tomorrow_at(10), tomorrow_at(11)))
    assert response.status == 409 and response.json()["error"]["reason"] == "already_booked"


def past(hours: int) -> dt.datetime:
    now = dt.datetime.now(SEOUL).replace(minute=0, second=0, microsecond=0)
    return now - dt.timedelta(hours=hours)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (lambda: booking(past(3), past(2)), 400, "starts_at"),  # in the past
        (lambda: booking(tomorrow_at(9, 10), tomorrow_at(10)), 400, "starts_at"),  # not on a slot
        (lambda: booking(tomorrow_at(10), tomorrow_at(9)), 400, "ends_at"),
        (lambda: booking(tomorrow_at(7), tomorrow_at(9)), 400, "starts_at"),  # before opening
        (lambda: booking(tomorrow_at(17), tomorrow_at(19)), 400, "ends_at"),  # after closing
        (lambda: booking(tomorrow_at(9), tomorrow_at(10), zone="internet"), 400, "zone"),  # no seats there
        (lambda: booking(tomorrow_at(9), tomorrow_at(10), zone="guest"), 400, "zone"),
        (lambda: booking(tomorrow_at(9), tomorrow_at(10), center="busan"), 400, "center"),
        (
            lambda: {"center": "seoul-station", "starts_at": "2026-12-07T09:00:00"},
            400,
            "starts_at",
        ),  # no zone
    ],
)
def test_bad_bookings_name_the_field_and_store_nothing(center_admin, centers_config, body, status, field):
    weekdays = {day: "08:00-18:00" for day in ALWAYS_OPEN}
    add_center(center_admin, opening_hours=weekdays, seats={"business": 2, "internet": 0})
    response = center_admin.post("/api/v1/reservations", json=body())
    assert response.status == status, response.text
    assert response.json()["error"]["field"] == field
    assert stored(centers_config, SeatReservation) == []


def test_concurrent_bookings_of_the_last_seat_give_it_to_exactly_one(
    center_admin, centers_url, centers_config
):
    add_center(center_admin, seats={"business": 1, "internet": 0})
    users = ["kimmj", "choijw", "guest01"]
    clients = [center_admin] + [signed_in(centers_url, name) for name in users[1:]]
    body = booking(tomorrow_at(14), tomorrow_at(16))
    start = threading.Barrier(len(clients))
    statuses: list[int] = []

    def book(client: BrokerClient) -> None:
        client.xsrf()
        start.wait()
        statuses.append(client.post("/api/v1/reservations", json=body).status)

    threads = [threading.Thread(target=book, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [201, 409, 409]
    assert len(stored(centers_config, SeatReservation, SeatReservation.state == "booked")) == 1
    assert len(stored(centers_config, SeatSlot)) == 4


def test_the_database_refuses_a_second_holder_of_a_seat_slot(center_admin, centers_config):
    add_center(center_admin)
    booked = center_admin.post("/api/v1/reservations", json=booking(tomorrow_at(9), tomorrow_at(10))).json()
    database = Database(centers_config.database)
    try:
        with pytest.raises(IntegrityError), database.transaction() as session:
            other = SeatReservation(
                center="seoul-station",
                zone="business",
                seat=1,
                username="choijw",
                starts_at=tomorrow_at(9),
                ends_at=tomorrow_at(10),
            )
            session.add(other)
            session.flush()
            slot = tomorrow_at(9).astimezone(dt.UTC)
            session.add(
                SeatSlot(
                    center="seoul-station", zone="business", seat=1, slot_start=slot, reservation_id=other.id
                )
            )
            session.flush()
    finally:
        database.close()
    assert [r.id for r in stored(centers_config, SeatReservation)] == [booked["id"]]


def test_occupancy_shows_a_days_booked_seats(center_admin, centers_url):
    add_center(center_admin)
    center_admin.post("/api/v1/reservations", json=booking(tomorrow_at(9), tomorrow_at(12)))
    signed_in(centers_url, "choijw").post(
        "/api/v1/reservations", json=booking(tomorrow_at(10), tomorrow_at(11))
    )
    day = tomorrow_at(9).date().isoformat()
    seats = center_admin.get(f"/api/v1/admin/centers/seoul-station/occupancy?day={day}").json()
    assert [(r["seat"], r["username"]) for r in seats["reservations"]] == [
        ("B01", "kimmj"),
        ("B02", "choijw"),
    ]
    assert center_admin.get("/api/v1/admin/centers/seoul-station/occupancy?day=tomorrow").status == 400
    assert center_admin.get("/api/v1/admin/centers/seoul-station/occupancy?day=9999-12-31").status == 400


# -- a login at a center terminal -------------------------------------------------------------------


def test_a_walk_in_login_gets_a_free_seat_of_its_network_zone(center_admin, centers_url, centers_config):
    add_center(center_admin)
    _client, response = login_at(centers_url, "choijw", INTERNET_ADDRESS)
    assert response.status == 200, response.text
    (seat,) = stored(centers_config, SeatReservation, SeatReservation.username == "choijw")
    assert (seat.kind, seat.zone, seat.seat) == ("walk_in", "internet", 1)
    assert seat.starts_at <= dt.datetime.now(dt.UTC) < seat.ends_at
    # Logging in again keeps the same seat.
    assert login_at(centers_url, "choijw", INTERNET_ADDRESS)[1].status == 200
    assert len(stored(centers_config, SeatReservation, SeatReservation.username == "choijw")) == 1


def test_a_login_without_a_free_seat_is_refused_naming_the_next_free_time(
    center_admin, centers_url, centers_config
):
    add_center(center_admin)
    assert login_at(centers_url, "choijw", INTERNET_ADDRESS)[1].status == 200  # the only internet seat
    (walk_in,) = stored(centers_config, SeatReservation)
    before = metric("vdi_center_logins_refused_total", reason="no_free_seat")
    _client, response = login_at(centers_url, "guest01", INTERNET_ADDRESS)
    assert response.status == 403
    error = response.json()["error"]
    assert error["reason"] == "no_free_seat"
    assert error["message"].endswith(
        f"The next free time: {walk_in.ends_at.astimezone(SEOUL):%Y-%m-%d %H:%M}"
    )
    assert metric("vdi_center_logins_refused_total", reason="no_free_seat") == before + 1
    refusal = stored(centers_config, AuditEvent, AuditEvent.actor == "guest01", AuditEvent.action == "login")[
        -1
    ]
    assert (refusal.result, refusal.detail["reason"]) == ("failure", "no_free_seat")
    # Away from the centers nobody needs a seat.
    assert login_at(centers_url, "guest01", AWAY_ADDRESS)[1].status == 200


def test_a_center_that_requires_booking_refuses_walk_ins_but_admits_bookings(center_admin, centers_url):
    add_center(center_admin, booking_policy="require_booking")
    _client, response = login_at(centers_url, "choijw", CENTER_ADDRESS)
    assert response.status == 403 and response.json()["error"]["reason"] == "booking_required"
    assert "Seoul Station Smart Work Center needs a seat booked" in response.json()["error"]["message"]
    now = dt.datetime.now(SEOUL)
    slot = now.replace(minute=now.minute - now.minute % 30, second=0, microsecond=0)
    # A booking ends by the center's closing, midnight here: after 23:00 Seoul time the hour is cut short.
    midnight = dt.datetime.combine(slot.date() + dt.timedelta(days=1), dt.time(0), SEOUL)
    ends = min(slot + dt.timedelta(hours=1), midnight)
    booked = center_admin.post("/api/v1/reservations", json=booking(slot, ends))
    assert booked.status == 201, booked.text
    assert login_at(centers_url, "kimmj", CENTER_ADDRESS)[1].status == 200


def test_a_login_while_the_center_is_closed_is_refused(center_admin, centers_url):
    today = dt.datetime.now(SEOUL).weekday()
    closed_today = {day: "09:00-18:00" for i, day in enumerate(ALWAYS_OPEN) if i != today}
    add_center(center_admin, opening_hours=closed_today)
    _client, response = login_at(centers_url, "choijw", CENTER_ADDRESS)
    assert response.status == 403 and response.json()["error"]["reason"] == "center_closed"
    ko = BrokerClient(centers_url)
    page = ko.post(
        "/login?lang=ko",
        body=f"username=choijw&password=correct+horse+battery+staple&_xsrf={ko.xsrf()}".encode(),
        headers={"X-Forwarded-For": CENTER_ADDRESS, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert page.status == 403 and "지금은 서울역 스마트워크센터 운영 시간이 아닙니다" in page.text


# -- many bookers at one center at once (9 o'clock at a smart work center) ---------------------------------
#
# Every booking used to choose the lowest free seat from what it had read, so bookings made together all
# chose the same seat; the losers read again and again chose alike, and after five tries were told "too
# many bookings at once" although seats were free. A center's bookings are now taken one at a time.

CROWD = 20
CROWD_IDENTITIES = {
    f"crowd{i:02d}": Identity(f"crowd{i:02d}", f"직원 {i:02d}", f"uid=crowd{i:02d},ou=people,dc=test", [])
    for i in range(CROWD)
}


def two_brokers(broker_server, config) -> list[str]:
    """Two brokers (each its own engine and pool) on the one database of `config`, knowing the crowd."""
    authenticator = FakeAuthenticator({**IDENTITIES, **CROWD_IDENTITIES})
    return [
        broker_server(
            config,
            authenticator=authenticator,
            providers={host.name: UnreachableProvider(host) for host in config.hosts},
            image_resolver=lambda pool: TEST_IMAGE,
        )
        for _ in range(2)
    ]


def all_at_once(action, count: int) -> list:
    """`action(i)` for i in range(count), each in its own thread, released together."""
    start = threading.Barrier(count)

    def run(index: int):
        start.wait()
        return action(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def terminal(index: int) -> str:
    """Each walk-in at a terminal of its own on the center's business network (10.20.0.0/24)."""
    return f"10.20.0.{100 + index}"


def booked_seats(config) -> list[tuple[str, int]]:
    rows = stored(config, SeatReservation, SeatReservation.state == "booked")
    return sorted((row.username, row.seat) for row in rows)


def test_a_crowd_walking_in_at_once_through_two_brokers_all_get_distinct_seats(
    broker_server, center_admin, centers_config
):
    add_center(center_admin, seats={"business": CROWD, "internet": 0})
    brokers = two_brokers(broker_server, centers_config)
    users = list(CROWD_IDENTITIES)
    before = metric("vdi_seat_bookings_total", result="walk_in")

    def walk_in(index: int):
        return login_at(brokers[index % 2], users[index], terminal(index))[1]

    responses = all_at_once(walk_in, CROWD)

    assert [r.status for r in responses] == [200] * CROWD, [r.text for r in responses if r.status != 200]
    seats = booked_seats(centers_config)
    assert sorted(user for user, _ in seats) == users
    # Distinct seats, and the lowest ones: nobody was sent past a free seat.
    assert sorted(seat for _, seat in seats) == list(range(1, CROWD + 1))
    assert metric("vdi_seat_bookings_total", result="walk_in") == before + CROWD
    walk_ins = stored(centers_config, AuditEvent, AuditEvent.action == "seat.book")
    assert len(walk_ins) == CROWD and {e.detail["kind"] for e in walk_ins} == {"walk_in"}


def test_a_crowd_larger_than_the_center_fills_it_and_the_rest_hear_the_next_free_time(
    broker_server, center_admin, centers_config
):
    seats = 6
    add_center(center_admin, seats={"business": seats, "internet": 0})
    brokers = two_brokers(broker_server, centers_config)
    users = list(CROWD_IDENTITIES)

    def walk_in(index: int):
        return login_at(brokers[index % 2], users[index], terminal(index))[1]

    responses = all_at_once(walk_in, CROWD)

    admitted = [r for r in responses if r.status == 200]
    refused = [r for r in responses if r.status != 200]
    assert len(admitted) == seats
    assert sorted(seat for _, seat in booked_seats(centers_config)) == list(range(1, seats + 1))
    walk_in_ends = {row.ends_at for row in stored(centers_config, SeatReservation)}
    assert len(walk_in_ends) == 1  # all from the same slot for walk_in_minutes
    next_free = f"{walk_in_ends.pop().astimezone(SEOUL):%Y-%m-%d %H:%M}"
    for response in refused:
        error = response.json()["error"]
        assert (response.status, error["reason"]) == (403, "no_free_seat"), response.text
        assert error["message"].endswith(f"The next free time: {next_free}"), error["message"]
        assert "at once" not in error["message"]


def test_a_crowd_booking_at_once_through_two_brokers_all_get_distinct_seats(
    broker_server, center_admin, centers_config
):
    add_center(center_admin, seats={"business": CROWD, "internet": 0})
    brokers = two_brokers(broker_server, centers_config)
    users = list(CROWD_IDENTITIES)
    clients = [BrokerClient(brokers[i % 2]) for i in range(CROWD)]
    for client, user in zip(clients, users, strict=True):
        assert client.login(user).status == 200
        client.xsrf()
    body = booking(tomorrow_at(9), tomorrow_at(12))
    before = metric("vdi_seat_bookings_total", result="race_lost")

    responses = all_at_once(lambda i: clients[i].post("/api/v1/reservations", json=body), CROWD)

    assert [r.status for r in responses] == [201] * CROWD, [r.text for r in responses if r.status != 201]
    assert sorted(r.json()["seat"] for r in responses) == [f"B{seat:02d}" for seat in range(1, CROWD + 1)]
    assert len(stored(centers_config, SeatSlot)) == CROWD * 6
    # Taken one at a time, no booking lost its seat to another and had to choose again.
    assert metric("vdi_seat_bookings_total", result="race_lost") == before


def test_a_crowd_booking_more_seats_than_there_are_fills_the_center_and_names_the_next_free_time(
    broker_server, center_admin, centers_config
):
    seats = 5
    add_center(center_admin, seats={"business": seats, "internet": 0})
    brokers = two_brokers(broker_server, centers_config)
    clients = [BrokerClient(brokers[i % 2]) for i in range(CROWD)]
    for client, user in zip(clients, CROWD_IDENTITIES, strict=True):
        assert client.login(user).status == 200
        client.xsrf()
    body = booking(tomorrow_at(9), tomorrow_at(12))

    responses = all_at_once(lambda i: clients[i].post("/api/v1/reservations", json=body), CROWD)

    assert sorted(r.status for r in responses) == [201] * seats + [409] * (CROWD - seats)
    assert sorted(seat for _, seat in booked_seats(centers_config)) == list(range(1, seats + 1))
    for response in (r for r in responses if r.status == 409):
        error = response.json()["error"]
        assert error["reason"] == "no_free_seat"
        assert error["message"].endswith(f"The next free time: {tomorrow_at(12):%Y-%m-%d} 12:00"), error


def test_one_user_logging_in_at_two_terminals_at_once_gets_one_seat(
    broker_server, center_admin, centers_config
):
    add_center(center_admin, seats={"business": 4, "internet": 0})
    brokers = two_brokers(broker_server, centers_config)

    responses = all_at_once(lambda i: login_at(brokers[i], "choijw", terminal(i))[1], 2)

    assert [r.status for r in responses] == [200, 200], [r.text for r in responses]
    assert booked_seats(centers_config) == [("choijw", 1)]
