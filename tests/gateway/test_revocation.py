"""Single sign-out reaches the gateway: open console tunnels of a revoked user close within 5 s."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.models import Desktop, DesktopSession
from broker.db.tokens import issue_token
from tests.fixtures.broker import seed_session
from tests.fixtures.gateway import RFB_BANNER, metric, read_close, receive_until, run_async, running_gateway
from tests.fixtures.login_security import signed_in_from
from vdi.lab.slapd import DEMO_PASSWORD

CLOSE_POLICY_VIOLATION = 1008


@pytest.fixture
def user_and_admin(secure_broker):
    """kimmj signed in on the real broker, and parkjh (an administrator) too."""
    url, config = secure_broker()
    user, admin = signed_in_from(url, "kimmj"), signed_in_from(url, "parkjh", "127.0.0.3")
    db = Database(config.database)
    yield config, db, user, admin
    db.close()


def open_tunnel_then(config, db: Database, fake_vnc, session_id: str, desktop_id: int, action):
    """Open a console tunnel, run the blocking `action` off the loop, return the tunnel's close."""

    async def scenario():
        async with fake_vnc.serving(), running_gateway(config, db) as gateway:
            with db.transaction() as s:
                token = issue_token(
                    s,
                    session_id=session_id,
                    desktop_id=desktop_id,
                    host="127.0.0.1",
                    port=fake_vnc.port,
                    ttl_s=30,
                )
            conn = await gateway.connect(token)
            await receive_until(conn, RFB_BANNER)
            response = await asyncio.to_thread(action)
            # The gateway polls once a second: 5 s is the promise, with room for a slow machine's poll.
            code, reason = await read_close(conn, timeout_s=5.0)
            return response, code, reason, len(gateway.app.tunnels)

    return run_async(scenario())


def session_and_desktop_state(db: Database, session_id: str) -> tuple[str, str]:
    with db.transaction() as s:
        return s.execute(
            select(DesktopSession.state, Desktop.state)
            .join(Desktop, Desktop.id == DesktopSession.desktop_id)
            .where(DesktopSession.id == session_id)
        ).one()


def test_logout_closes_the_users_open_tunnel(user_and_admin, fake_vnc):
    config, db, user, _ = user_and_admin
    session_id, desktop_id = seed_session(db, "kimmj", "mois-office", vnc_port=fake_vnc.port)
    closed_before = metric("vdi_gateway_tunnels_closed_revoked_total")

    response, code, reason, open_after = open_tunnel_then(
        config, db, fake_vnc, session_id, desktop_id, lambda: user.post("/api/v1/logout")
    )

    assert response.status == 200
    assert (code, reason) == (CLOSE_POLICY_VIOLATION, "session revoked")
    assert open_after == 0
    assert metric("vdi_gateway_tunnels_closed_revoked_total") == closed_before + 1
    # A disconnect, not a logoff: the session has ended, the desktop keeps running.
    assert session_and_desktop_state(db, session_id) == ("ended", "running")


def test_an_administrators_revoke_closes_the_users_tunnel_and_portal_sessions(user_and_admin, fake_vnc):
    config, db, user, admin = user_and_admin
    session_id, desktop_id = seed_session(db, "kimmj", "mois-office", vnc_port=fake_vnc.port)

    response, code, reason, _ = open_tunnel_then(
        config,
        db,
        fake_vnc,
        session_id,
        desktop_id,
        lambda: admin.post("/api/v1/admin/users/kimmj/revoke-sessions"),
    )

    assert response.status == 200, response.text
    assert response.json()["revoked"] == {"portal_sessions": 1, "desktop_sessions": 1}
    assert (code, reason) == (CLOSE_POLICY_VIOLATION, "session revoked")
    assert user.get("/api/v1/me").status == 401
    # Signed in again, the revoked session gives no new console access; the next connect opens a new one.
    assert user.login("kimmj", DEMO_PASSWORD).status == 200
    again = user.post(f"/api/v1/sessions/{session_id}/console-token")
    assert again.status == 409 and again.json()["error"]["reason"] == "session_ended"


def test_only_the_ended_sessions_tunnel_closes(console_db, gateway_config, fake_vnc):
    ended, other = (
        console_db.add_session(vnc_port=fake_vnc.port),
        console_db.add_session(vnc_port=fake_vnc.port),
    )

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conns = [await gateway.connect(console_db.issue(session)) for session in (ended, other)]
            for conn in conns:
                await receive_until(conn, RFB_BANNER)
            with console_db.db.transaction() as s:  # a logoff by the broker, not a revoke
                s.get(DesktopSession, ended.session_id).state = "ended"
            closed = await read_close(conns[0], timeout_s=5.0)
            conns[1].write_message(b"still here", binary=True)
            await receive_until(conns[1], b"still here")
            return closed

    assert run_async(scenario()) == (CLOSE_POLICY_VIOLATION, "session ended")
