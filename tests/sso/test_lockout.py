"""Lockout per user name and per source address, against the real slapd and the real broker."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent
from sso import lockout
from sso.config import LockoutSettings
from tests.fixtures.gateway import metric
from tests.fixtures.login_security import OUTSIDE, SourceClient
from vdi.lab.slapd import DEMO_PASSWORD

WRONG = "not-the-password"
NOW = dt.datetime(2026, 11, 22, 5, 0, tzinfo=dt.UTC)


def fail(client: SourceClient, username: str, times: int) -> list[int]:
    return [client.login(username, WRONG).status for _ in range(times)]


def audit_reasons(config, username: str) -> list[str]:
    db = Database(config.database)
    try:
        with db.transaction() as s:
            rows = s.scalars(select(AuditEvent).where(AuditEvent.actor == username).order_by(AuditEvent.id))
            return [row.detail.get("reason", "") for row in rows]
    finally:
        db.close()


# -- the policy -----------------------------------------------------------------------------------


def failed_attempt(counter, settings, now=NOW) -> bool:
    """One wrong guess: its place reserved first, then settled; True when it locked the counter."""
    assert lockout.reserve_attempt(counter, lockout.USER, settings, now) == 0
    return lockout.settle_failure(counter, lockout.USER, settings, now)


def test_the_fifth_failure_in_the_window_locks_and_an_old_window_restarts():
    settings = LockoutSettings()
    counter = SimpleNamespace(failures=0, window_started_at=NOW, locked_until=None)
    assert [failed_attempt(counter, settings) for _ in range(5)] == [False] * 4 + [True]
    assert lockout.seconds_locked(counter, NOW) == 300
    assert lockout.reserve_attempt(counter, lockout.USER, settings, NOW) == 300
    after = NOW + dt.timedelta(seconds=301)
    assert lockout.seconds_locked(counter, after) == 0
    assert not failed_attempt(counter, settings, after)  # the lock's end starts a fresh window
    assert counter.failures == 1

    fresh = SimpleNamespace(failures=4, window_started_at=NOW - dt.timedelta(seconds=301), locked_until=None)
    assert not failed_attempt(fresh, settings)
    assert fresh.failures == 1


def test_attempts_in_flight_hold_their_places_and_a_success_gives_its_place_back():
    settings = LockoutSettings()
    counter = SimpleNamespace(failures=0, window_started_at=NOW, locked_until=None)
    assert [lockout.reserve_attempt(counter, lockout.USER, settings, NOW) for _ in range(5)] == [0] * 5
    # A sixth guess while five are being checked is refused before it reaches the directory.
    assert lockout.reserve_attempt(counter, lockout.USER, settings, NOW) == 300
    lockout.release_attempt(counter)
    assert lockout.reserve_attempt(counter, lockout.USER, settings, NOW) == 0


def test_a_center_address_counts_completed_failures_only_and_caps_attempts_in_flight():
    settings = LockoutSettings(center_source_max_failures=3, center_source_max_in_flight=2)
    in_flight = SimpleNamespace(failures=0, window_started_at=NOW, locked_until=None)
    assert [lockout.reserve_in_flight(in_flight, settings, NOW) for _ in range(3)] == [0, 0, 5]
    lockout.release_attempt(in_flight)
    assert lockout.reserve_in_flight(in_flight, settings, NOW) == 0
    # Places of attempts whose broker died are free again with the next window.
    later = NOW + dt.timedelta(seconds=301)
    assert lockout.reserve_in_flight(in_flight, settings, later) == 0
    assert in_flight.failures == 1

    source = SimpleNamespace(failures=0, window_started_at=NOW, locked_until=None)
    assert [lockout.record_failure(source, settings, NOW) for _ in range(3)] == [False, False, True]
    assert lockout.seconds_locked(source, NOW) == 300
    assert not lockout.record_failure(source, settings, NOW)  # already locked: counted no further
    assert not lockout.record_failure(source, settings, NOW + dt.timedelta(seconds=301))
    assert (source.failures, source.locked_until) == (1, None)  # the lock's end starts a fresh window


def test_user_names_are_counted_case_insensitively():
    assert lockout.normalize_username("  KimMJ ") == "kimmj"


# -- the broker with the real directory -----------------------------------------------------------


def test_five_bad_passwords_lock_the_user_even_against_the_right_one(secure_broker):
    url, config = secure_broker()
    client = SourceClient(url, OUTSIDE)
    locks_before = metric("vdi_login_lockouts_total", kind="user")

    assert fail(client, "kimmj", 5) == [401] * 5
    refused = client.login("kimmj", DEMO_PASSWORD)

    assert refused.status == 401
    assert refused.json()["error"]["reason"] == "invalid_credentials"
    # The locked answer is the wrong-password answer, byte for byte: a lock tells a guesser nothing.
    assert refused.body == client.login("kimmj", WRONG).body
    assert metric("vdi_login_lockouts_total", kind="user") == locks_before + 1
    reasons = audit_reasons(config, "kimmj")
    assert "user locked" in reasons
    assert all(DEMO_PASSWORD not in reason and WRONG not in reason for reason in reasons)


def test_unknown_users_get_the_same_answer_and_are_locked_alike(secure_broker):
    url, config = secure_broker()
    client = SourceClient(url, OUTSIDE)
    unknown = client.login("no-such-user", WRONG)
    wrong = client.login("leesy", WRONG)
    assert (unknown.status, unknown.body) == (wrong.status, wrong.body)
    assert fail(client, "no-such-user", 5) == [401] * 5
    assert audit_reasons(config, "no-such-user")[-1] == "user locked"


def test_a_lock_from_one_source_does_not_lock_another_user_elsewhere(secure_broker):
    url, _ = secure_broker()
    fail(SourceClient(url, "127.0.0.5"), "kimmj", 5)
    assert SourceClient(url, "127.0.0.5").login("kimmj", DEMO_PASSWORD).status == 401
    assert SourceClient(url, "127.0.0.6").login("leesy", DEMO_PASSWORD).status == 200


def test_success_resets_the_users_counter(secure_broker):
    url, _ = secure_broker()
    client = SourceClient(url, OUTSIDE)
    fail(client, "choijw", 4)
    assert client.login("choijw", DEMO_PASSWORD).status == 200
    fail(client, "choijw", 4)
    assert client.login("choijw", DEMO_PASSWORD).status == 200


def test_a_locked_source_gets_429_with_retry_after(secure_broker):
    url, config = secure_broker(lockout={"source_max_failures": 3, "lock_s": 120})
    guesser = SourceClient(url, "127.0.0.7")
    locks_before = metric("vdi_login_lockouts_total", kind="source")

    assert [guesser.login(name, WRONG).status for name in ("jungdh", "kangye", "hanjy")] == [401] * 3
    refused = guesser.login("chohy", DEMO_PASSWORD)

    assert refused.status == 429
    assert refused.json()["error"]["reason"] == "too_many_attempts"
    assert 0 < int(refused.headers["Retry-After"]) <= 120
    assert metric("vdi_login_lockouts_total", kind="source") == locks_before + 1
    assert "source address locked" in audit_reasons(config, "chohy")
    assert SourceClient(url, "127.0.0.8").login("chohy", DEMO_PASSWORD).status == 200


def test_the_lock_holds_across_two_brokers_on_one_database(secure_broker, tmp_path):
    database = tmp_path / "shared.db"
    first, _ = secure_broker(database=database)
    second, _ = secure_broker(database=database)

    assert fail(SourceClient(first, OUTSIDE), "yoonsh", 3) == [401] * 3
    assert fail(SourceClient(second, OUTSIDE), "yoonsh", 2) == [401] * 2

    assert SourceClient(first, OUTSIDE).login("yoonsh", DEMO_PASSWORD).status == 401
    assert SourceClient(second, "127.0.0.9").login("yoonsh", DEMO_PASSWORD).status == 401


def test_the_portal_form_answers_a_lock_like_a_wrong_password(secure_broker):
    url, _ = secure_broker()
    client = SourceClient(url, OUTSIDE)
    fail(client, "jangwj", 5)
    page = client.post(
        "/login",
        body=f"username=jangwj&password={DEMO_PASSWORD}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert page.status == 401
    assert "The user name or password is incorrect." in page.text or "올바르지 않습니다" in page.text


def test_concurrent_failures_on_two_brokers_all_count_and_none_errors(secure_broker, tmp_path):
    database = tmp_path / "shared.db"
    brokers = [secure_broker(database=database)[0] for _ in range(2)]
    clients = [SourceClient(brokers[i % 2], OUTSIDE) for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda client: client.login("hanjy", WRONG).status, clients))
    assert statuses == [401] * 8
    assert SourceClient(brokers[0], "127.0.0.10").login("hanjy", DEMO_PASSWORD).status == 401
