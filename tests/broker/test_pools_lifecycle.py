"""Session lifecycle: idle and maximum-time logoff by pool policy, and an administrator's force logoff.

The pools here are dedicated, so a logoff ends the session and keeps the desktop: no hypervisor
call is needed, and the host stays the unreachable test host (a call would fail the test).
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import event, select

from broker.app import prepare_database
from broker.db.models import AuditEvent, Desktop, DesktopSession, utcnow
from broker.desktops import DesktopService
from broker.lifecycle import POLICY_ACTOR, SessionLifecycle
from sso.base import Identity
from tests.fixtures.broker import (
    COOKIE_SECRET,
    IDENTITIES,
    BrokerClient,
    FakeAuthenticator,
    make_broker_config,
    seed_session,
)

ADMIN = Identity("admin01", "관리자", "uid=admin01,ou=people,dc=test", ["vdi-admins"])


@pytest.fixture
def broker_config(tmp_path):
    limits = {"kind": "dedicated", "idle_timeout_s": 60, "max_session_s": 600}
    return make_broker_config(
        tmp_path / "broker.db",
        broker={
            "cookie_secret": COOKIE_SECRET,
            "gateway_url": "ws://127.0.0.1:9/ws",
            "admin_groups": ["vdi-admins"],
        },
        pools=[
            {"name": "mois-office", "display_name": "행정안전부", "groups": ["mois"]} | limits,
            {"name": "moef-office", "display_name": "기획재정부", "groups": ["moef"]} | limits,
        ],
    )


@pytest.fixture
def fake_authenticator():
    return FakeAuthenticator(IDENTITIES | {ADMIN.username: ADMIN})


def backdate(db, session_id: str, **ages: int) -> None:
    with db.transaction() as session:
        row = session.get(DesktopSession, session_id)
        for column, seconds in ages.items():
            setattr(row, column, utcnow() - dt.timedelta(seconds=seconds))


def state_of(db, session_id: str) -> tuple[str, str]:
    with db.transaction() as session:
        row = session.get(DesktopSession, session_id)
        return row.state, session.get(Desktop, row.desktop_id).state


def audited(db, action: str) -> list[AuditEvent]:
    with db.transaction() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all())


def enforce(config, db, drivers) -> int:
    async def run() -> int:
        desktops = DesktopService(config, db, drivers)
        try:
            return await SessionLifecycle(config, db, desktops).enforce_once()
        finally:
            desktops.close()

    return asyncio.run(run())


def test_idle_and_overlong_sessions_are_logged_off_by_pool_policy(
    broker_config, broker_db, unreachable_providers
):
    asyncio.run(prepare_database(broker_db, broker_config))  # the pools and hosts rows the broker makes
    idle, _ = seed_session(broker_db, "kimmj", "mois-office")
    backdate(broker_db, idle, started_at=120, last_input_at=90)
    overlong, _ = seed_session(broker_db, "choijw", "moef-office")
    backdate(broker_db, overlong, started_at=900, last_input_at=1)
    busy, _ = seed_session(broker_db, "guest01", "mois-office")
    backdate(broker_db, busy, started_at=120, last_input_at=5)

    assert enforce(broker_config, broker_db, unreachable_providers) == 2

    assert state_of(broker_db, idle) == ("ended", "running")
    assert state_of(broker_db, overlong) == ("ended", "running")
    assert state_of(broker_db, busy) == ("active", "running")
    (idle_event,) = audited(broker_db, "idle_logoff")
    (time_event,) = audited(broker_db, "max_time_logoff")
    assert (idle_event.actor, idle_event.detail["user"]) == (POLICY_ACTOR, "kimmj")
    assert (time_event.actor, time_event.detail["user"]) == (POLICY_ACTOR, "choijw")
    assert unreachable_providers["local"].calls == []


def test_administrator_forces_a_logoff_and_it_is_audited(broker_url, broker_db):
    session_id, _ = seed_session(broker_db, "kimmj", "mois-office")
    admin = BrokerClient(broker_url)
    assert admin.login(ADMIN.username).status == 200

    response = admin.post(f"/api/v1/admin/sessions/{session_id}/logoff")

    assert (response.status, response.json()["state"]) == (200, "ended")
    (event,) = audited(broker_db, "force_logoff")
    assert (event.actor, event.detail["user"]) == (ADMIN.username, "kimmj")
    assert state_of(broker_db, session_id) == ("ended", "running")


def test_force_logoff_needs_an_administrator_and_a_known_session(broker_url, broker_db):
    session_id, _ = seed_session(broker_db, "kimmj", "mois-office")
    user = BrokerClient(broker_url)
    assert user.login("kimmj").status == 200
    assert user.post(f"/api/v1/admin/sessions/{session_id}/logoff").status == 403
    assert state_of(broker_db, session_id) == ("active", "running")

    admin = BrokerClient(broker_url)
    assert admin.login(ADMIN.username).status == 200
    missing = admin.post("/api/v1/admin/sessions/00000000-0000-0000-0000-000000000000/logoff")
    assert (missing.status, missing.json()["error"]["reason"]) == (404, "unknown_session")


def test_input_that_arrives_during_a_pass_saves_the_session(broker_config, broker_db, unreachable_providers):
    """The pass reads all overdue sessions first, then logs them off one by one. A user who types after
    that read (the gateway records it in last_input_at) keeps their session."""
    asyncio.run(prepare_database(broker_db, broker_config))
    idle, _ = seed_session(broker_db, "kimmj", "mois-office")
    backdate(broker_db, idle, started_at=120, last_input_at=90)
    typing, _ = seed_session(broker_db, "guest01", "mois-office")
    backdate(broker_db, typing, started_at=120, last_input_at=90)
    typed = []

    def input_after_the_pass_read(conn, cursor, statement, *_args) -> None:
        if typed or not statement.lstrip().upper().startswith("SELECT") or "JOIN desktops" not in statement:
            return
        typed.append(True)
        backdate(broker_db, typing, last_input_at=0)

    event.listen(broker_db.engine, "after_cursor_execute", input_after_the_pass_read)
    try:
        logged_off = enforce(broker_config, broker_db, unreachable_providers)
    finally:
        event.remove(broker_db.engine, "after_cursor_execute", input_after_the_pass_read)

    assert typed, "the input arrived after the pass read the sessions"
    assert logged_off == 1
    assert state_of(broker_db, idle) == ("ended", "running")
    assert state_of(broker_db, typing) == ("active", "running")
    assert [event.detail["user"] for event in audited(broker_db, "idle_logoff")] == ["kimmj"]
