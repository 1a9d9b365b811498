"""Regression tests for finding 5 of the security review (issue 11): resource exhaustion.

Unlimited console tokens per user and tunnels per session, Tornado's one-hour header timeout on broker
and gateway, and request bodies up to 100 MB accepted before login.
"""

from __future__ import annotations

import asyncio
import socket

from broker.db import Database
from tests.fixtures.broker import BrokerClient, make_broker_config, seed_session
from tests.fixtures.gateway import RFB_BANNER, metric, read_close, receive_until, run_async, running_gateway


def test_finding_5_the_third_tunnel_of_a_session_is_refused(console_db, fake_vnc, gateway_config):
    """Unbounded tunnels per session (the shape of OSSN-0008): at most gateway.max_tunnels_per_session."""
    session = console_db.add_session(vnc_port=fake_vnc.port)
    tokens = [console_db.issue(session) for _ in range(3)]
    refused_before = metric("vdi_gateway_tunnels_refused_total", reason="limit")

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            first, second = await asyncio.gather(*(gateway.connect(token) for token in tokens[:2]))
            for conn in (first, second):
                await receive_until(conn, RFB_BANNER)
            third = await gateway.connect(tokens[2])
            assert await read_close(third) == (1008, "too many consoles open for this session")
            first.close()
            await read_close(first)

    run_async(scenario())
    assert fake_vnc.connections == 2
    assert metric("vdi_gateway_tunnels_refused_total", reason="limit") == refused_before + 1


def test_finding_5_console_tokens_are_rate_limited_per_user(
    broker_server, tmp_path, fake_authenticator, unreachable_providers
):
    """One user could mint unlimited console tokens; now broker.console_tokens_per_minute, then 429."""
    config = make_broker_config(
        tmp_path / "broker.db",
        broker={
            "cookie_secret": "token-rate-tests-cookie-secret-0123456789",
            "gateway_url": "ws://127.0.0.1:9/ws",
            "console_tokens_per_minute": 3,
        },
    )
    url = broker_server(config, authenticator=fake_authenticator, providers=unreachable_providers)
    client = BrokerClient(url)
    assert client.login("kimmj").status == 200
    db = Database(config.database)
    try:
        session_id, _ = seed_session(db, "kimmj", "mois-office")
    finally:
        db.close()
    answers = [client.post(f"/api/v1/sessions/{session_id}/console-token") for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert answers[3].json()["error"]["reason"] == "console_token_rate"
    assert int(answers[3].headers["Retry-After"]) > 0


def raw_request(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(4096):
            received += chunk
        return received


def test_finding_5_an_oversized_body_is_refused_before_it_is_read(broker_url):
    """Bodies up to 100 MB were accepted before login; now broker.max_body_bytes, refused on the headers."""
    port = int(broker_url.rsplit(":", 1)[1])
    head = (
        b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )
    # No body follows: the answer comes from the headers alone, and the connection is closed.
    assert raw_request(port, head).startswith(b"HTTP/1.1 400")


def test_finding_5_a_silent_connection_to_the_broker_is_closed(broker_server, tmp_path, fake_authenticator):
    """Tornado's default waited an hour for request headers; broker.header_timeout_s closes the socket."""
    config = make_broker_config(
        tmp_path / "broker.db",
        broker={
            "cookie_secret": "header-timeout-tests-cookie-secret-0123456789",
            "gateway_url": "ws://127.0.0.1:9/ws",
            "header_timeout_s": 1,
        },
    )
    port = int(broker_server(config, authenticator=fake_authenticator, providers={}).rsplit(":", 1)[1])
    # The 30 s socket timeout would raise if the broker kept the connection; it closes it instead.
    assert raw_request(port, b"GET / HTTP/1.1\r\n") == b""


def test_finding_5_a_silent_connection_to_the_gateway_is_closed(console_db, gateway_config):
    """The gateway waited an hour for a WebSocket upgrade that never came; gateway.handshake_timeout_s."""
    config = gateway_config.model_copy(
        update={"gateway": gateway_config.gateway.model_copy(update={"handshake_timeout_s": 1})}
    )

    async def scenario():
        async with running_gateway(config, console_db.db) as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(b"GET /ws HTTP/1.1\r\n")
            assert await asyncio.wait_for(reader.read(), 30) == b""
            writer.close()

    run_async(scenario())
