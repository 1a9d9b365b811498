"""The console relay: token consumption, Origin, relaying both ways, and closing."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from tornado.httpclient import HTTPClientError

from broker.db import Database
from broker.db.config import DatabaseSettings
from gateway.relay import close_reason
from tests.fixtures.common import free_port
from tests.fixtures.gateway import (
    RFB_BANNER,
    FloodingVnc,
    eventually,
    metric,
    read_close,
    receive_until,
    run_async,
    running_gateway,
    stalls,
)

REFUSED = "vdi_gateway_tunnels_refused_total"
RELAYED = "vdi_gateway_bytes_relayed_total"
OPEN = "vdi_gateway_tunnels_open"


def test_valid_token_relays_both_ways(console_db, fake_vnc, gateway_config):
    session = console_db.add_session(vnc_port=fake_vnc.port)
    token = console_db.issue(session)

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            assert await receive_until(conn, RFB_BANNER) == RFB_BANNER
            conn.write_message(b"RFB 003.008\n\x01", binary=True)
            await eventually(lambda: bytes(fake_vnc.received) == b"RFB 003.008\n\x01", what="bytes upstream")
            assert (await receive_until(conn, b"\x01")).endswith(b"RFB 003.008\n\x01")
            conn.close()

    run_async(scenario())


def test_binary_subprotocol_is_chosen_when_offered(console_db, fake_vnc, gateway_config):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token, subprotocols=["binary", "base64"])
            assert conn.selected_subprotocol == "binary"
            await receive_until(conn, RFB_BANNER)
            conn.close()

    run_async(scenario())


@pytest.mark.parametrize(
    "connect_args",
    [{"path": "/websockify"}, {"origin": "HTTP://127.0.0.1:8080"}],
    ids=["websockify-path", "origin-in-capitals"],
)
def test_websockify_path_is_served_too_and_origin_matches_case_insensitively(
    console_db, fake_vnc, gateway_config, connect_args
):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token, **connect_args)
            await receive_until(conn, RFB_BANNER)
            conn.close()

    run_async(scenario())


def test_token_works_only_once(console_db, fake_vnc, gateway_config):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            first = await gateway.connect(token)
            await receive_until(first, RFB_BANNER)
            second = await gateway.connect(token)
            code, reason = await read_close(second)
            assert code == 1008
            assert "already used" in reason
            assert fake_vnc.connections == 1
            first.close()

    run_async(scenario())


@pytest.mark.parametrize(
    ("make_token", "expected_reason"),
    [
        (lambda db, s: db.issue(s, now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)), "expired"),
        (lambda db, s: secrets.token_urlsafe(32), "unknown console token"),
        (lambda db, s: "", "missing"),
    ],
    ids=["expired", "forged", "empty"],
)
def test_refused_tokens_close_with_policy_violation(
    console_db, fake_vnc, gateway_config, make_token, expected_reason
):
    token = make_token(console_db, console_db.add_session(vnc_port=fake_vnc.port))
    refused_before = metric(REFUSED, reason="token")

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            code, reason = await read_close(conn)
            assert (code, expected_reason in reason) == (1008, True), (code, reason)
            assert fake_vnc.connections == 0

    run_async(scenario())
    assert metric(REFUSED, reason="token") == refused_before + 1


def test_missing_token_parameter_is_refused(console_db, gateway_config):
    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(None)
            code, reason = await read_close(conn)
            assert code == 1008
            assert "missing" in reason

    run_async(scenario())


def test_desktop_not_running_is_refused(console_db, fake_vnc, gateway_config):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port, desktop_state="stopped"))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            code, reason = await read_close(await gateway.connect(token))
            assert (code, reason) == (1008, "desktop is not running")

    run_async(scenario())


def test_unreachable_display_closes_with_internal_error(console_db, gateway_config):
    token = console_db.issue(console_db.add_session(vnc_port=free_port()))
    refused_before = metric(REFUSED, reason="upstream")

    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            code, reason = await read_close(await gateway.connect(token))
            assert (code, reason) == (1011, "desktop display unreachable")

    run_async(scenario())
    assert metric(REFUSED, reason="upstream") == refused_before + 1


@pytest.mark.parametrize(
    "origin", ["http://evil.example:8080", "http://127.0.0.1:8081", "https://127.0.0.1:8080", "null"]
)
def test_foreign_origin_is_refused_at_handshake(console_db, fake_vnc, gateway_config, origin):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))
    refused_before = metric(REFUSED, reason="origin")

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            with pytest.raises(HTTPClientError) as refused:
                await gateway.connect(token, origin=origin)
            assert refused.value.code == 403
            assert fake_vnc.connections == 0

    run_async(scenario())
    assert metric(REFUSED, reason="origin") == refused_before + 1


def test_bytes_and_open_tunnels_are_counted(console_db, fake_vnc, gateway_config):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))
    to_desktop = metric(RELAYED, direction="client_to_desktop")
    to_client = metric(RELAYED, direction="desktop_to_client")
    open_before = metric(OPEN)

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await receive_until(conn, RFB_BANNER)
            assert metric(OPEN) == open_before + 1
            conn.write_message(b"x" * 1000, binary=True)
            await receive_until(conn, b"x" * 1000)
            conn.close()
            await eventually(lambda: metric(OPEN) == open_before, what="tunnel gauge back down")

    run_async(scenario())
    assert metric(RELAYED, direction="client_to_desktop") == to_desktop + 1000
    assert metric(RELAYED, direction="desktop_to_client") == to_client + len(RFB_BANNER) + 1000


def test_desktop_hanging_up_closes_the_websocket_normally(console_db, fake_vnc, gateway_config):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await receive_until(conn, RFB_BANNER)
            fake_vnc.hang_up()
            code, reason = await read_close(conn)
            assert (code, reason) == (1000, "desktop closed the connection")
            await eventually(lambda: len(gateway.app.tunnels) == 0, what="tunnel unregistered")

    run_async(scenario())


def test_browser_leaving_closes_the_desktop_connection(console_db, fake_vnc, gateway_config):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await receive_until(conn, RFB_BANNER)
            await eventually(lambda: fake_vnc.streams, what="upstream connection")
            conn.close()
            await eventually(lambda: not fake_vnc.streams, what="upstream connection closed")
            assert len(gateway.app.tunnels) == 0

    run_async(scenario())


def test_text_message_closes_with_unsupported_data(console_db, fake_vnc, gateway_config):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await receive_until(conn, RFB_BANNER)
            conn.write_message("hello")
            code, _reason = await read_close(conn)
            assert code == 1003
            await eventually(lambda: not fake_vnc.streams, what="upstream connection closed")
            assert bytes(fake_vnc.received) == b""

    run_async(scenario())


def test_close_session_closes_only_that_sessions_tunnels(console_db, fake_vnc, gateway_config):
    ended = console_db.add_session(vnc_port=fake_vnc.port)
    other = console_db.add_session(vnc_port=fake_vnc.port)
    tokens = [console_db.issue(ended), console_db.issue(ended), console_db.issue(other)]

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conns = [await gateway.connect(token) for token in tokens]
            for conn in conns:
                await receive_until(conn, RFB_BANNER)
            assert gateway.app.close_session(ended.session_id, "session ended by administrator") == 2
            for conn in conns[:2]:
                assert await read_close(conn) == (1000, "session ended by administrator")
            assert gateway.app.tunnels.sessions() == [other.session_id]
            conns[2].write_message(b"still here", binary=True)
            await receive_until(conns[2], b"still here")
            conns[2].close()

    run_async(scenario())


def test_slow_browser_slows_the_desktop_instead_of_buffering(console_db, gateway_config):
    """Backpressure: while the browser does not read, the gateway stops reading the desktop."""
    flood = FloodingVnc()
    token = console_db.issue(console_db.add_session(vnc_port=flood.port))

    async def scenario():
        async with flood.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await eventually(lambda: flood.sent > 0, what="flood started")
            stalled_at = await stalls(lambda: flood.sent)
            # Kernel socket buffers on both hops hold some MiB; without backpressure the gateway would
            # read the desktop at loopback speed into memory and this would never stall.
            assert stalled_at < 64 * 1024 * 1024
            conn.close()

    run_async(scenario())


def test_close_reasons_fit_a_control_frame():
    reason = close_reason("데스크톱 세션이 관리자에 의해 종료되었습니다 " * 5)
    assert len(reason.encode("utf-8")) <= 123
    assert reason.startswith("데스크톱")


def test_unreachable_database_closes_with_internal_error(tmp_path, gateway_config, caplog):
    database = Database(DatabaseSettings(url=f"sqlite:///{tmp_path}/no-such-dir/vdi.db"))
    token = secrets.token_urlsafe(32)  # well formed, so the gateway asks the database

    async def scenario():
        async with running_gateway(gateway_config, database) as gateway:
            code, reason = await read_close(await gateway.connect(token))
            assert (code, reason) == (1011, "console service unavailable")

    try:
        run_async(scenario())
    finally:
        database.close()
    assert "console refused: database unavailable (token ***)" in caplog.text
    assert token not in caplog.text
