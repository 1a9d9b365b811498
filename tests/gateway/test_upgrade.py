"""The gateway's own WebSocket upgrade on plain listeners (gateway/upgrade.py): consoles are opened without
Tornado's HTTP server, everything else is still Tornado's, and bad or slow request heads are answered."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct

from tornado.util import _websocket_mask

from gateway.relay import ConsoleRelay
from gateway.upgrade import LeanConsole
from tests.fixtures.gateway import (
    ORIGIN,
    RFB_BANNER,
    eventually,
    metric,
    read_close,
    receive_until,
    run_async,
    running_gateway,
)

REFUSED = "vdi_gateway_tunnels_refused_total"


def _with(gateway_config, **changes):
    return gateway_config.model_copy(update={"gateway": gateway_config.gateway.model_copy(update=changes)})


def _upgrade_head(port: int, path: str, token: str, **extra: str) -> bytes:
    headers = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Origin": ORIGIN,
        **extra,
    }
    lines = [f"GET {path}?token={token} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _exchange(port: int, *pieces: bytes) -> bytes:
    """Send the pieces (each its own write) and read everything until the gateway closes the socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _masked_close(code: int) -> bytes:
    key = os.urandom(4)
    return bytes((0x88, 0x80 | 2)) + key + _websocket_mask(key, struct.pack("!H", code))


def _tunnel(gateway):
    (relay,) = [relay for relays in gateway.app.tunnels._by_session.values() for relay in relays]
    return relay


def test_a_console_on_a_plain_listener_is_opened_without_tornados_http_server(
    console_db, fake_vnc, gateway_config
):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token, subprotocols=["binary"])
            assert conn.selected_subprotocol == "binary"
            await receive_until(conn, RFB_BANNER)
            assert isinstance(_tunnel(gateway), LeanConsole)
            conn.write_message(b"both ways", binary=True)
            await receive_until(conn, b"both ways")
            conn.close()
            await eventually(lambda: len(gateway.app.tunnels) == 0, what="tunnel closed")

    run_async(scenario())


def test_with_the_protocol_relay_off_tornado_upgrades_consoles_as_before(
    console_db, fake_vnc, gateway_config
):
    config = _with(gateway_config, protocol_relay=False)
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await receive_until(conn, RFB_BANNER)
            assert isinstance(_tunnel(gateway), ConsoleRelay)
            conn.close()

    run_async(scenario())


def test_other_requests_are_still_tornados_even_with_a_long_head_in_pieces(console_db, gateway_config):
    cookie = "c=" + "x" * 20_000  # several reads of the head before Tornado gets it

    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            head = (
                f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            )
            answer = await _exchange(gateway.port, head[:10].encode(), head[10:].encode())
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"status": "ok", "tunnels_open": 0}
            metrics = await _exchange(
                gateway.port, b"GET /metrics HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
            assert metrics.startswith(b"HTTP/1.1 200 ") and b"vdi_gateway_tunnels_open" in metrics
            # A console path without an upgrade: Tornado's WebSocket handler answers, as always.
            plain = await _exchange(
                gateway.port, b"GET /ws?token=x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
            assert plain.startswith(b"HTTP/1.1 400 "), plain[:100]

    run_async(scenario())


def test_a_malformed_request_head_gets_400_and_is_closed(console_db, gateway_config):
    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            answer = await _exchange(gateway.port, b"NOT A REQUEST\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 "), answer

    run_async(scenario())


def test_an_oversized_request_head_gets_431_and_is_closed(console_db, gateway_config):
    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            head = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: " + b"y" * 70_000
            answer = await _exchange(gateway.port, head)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]

    run_async(scenario())


def test_a_slow_request_head_is_dropped_after_the_handshake_timeout(console_db, gateway_config):
    config = _with(gateway_config, handshake_timeout_s=0.5)

    async def scenario():
        async with running_gateway(config, console_db.db) as gateway:
            answer = await _exchange(gateway.port, b"GET /ws?token=x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert answer == b""  # closed without an answer

    run_async(scenario())


def test_a_refused_token_closes_the_websocket_with_1008_and_the_reason(console_db, gateway_config, caplog):
    caplog.set_level(logging.INFO)
    refused_before = metric(REFUSED, reason="token")
    token = "x" * 43  # well-formed, unknown

    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(_upgrade_head(gateway.port, gateway.path, token))
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455's example
            first, size = await reader.readexactly(2)
            assert first == 0x88  # a whole close frame
            payload = await reader.readexactly(size)
            assert payload == struct.pack("!H", 1008) + b"unknown console token"
            writer.write(_masked_close(1008))  # the browser's answer ends the closing handshake
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

    run_async(scenario())
    assert metric(REFUSED, reason="token") == refused_before + 1
    lines = [record.getMessage() for record in caplog.records]
    assert "console refused: unknown console token (token ***)" in lines
    assert all(token not in line for line in lines)


def test_a_console_refused_by_its_origin_is_still_answered_403(console_db, fake_vnc, gateway_config):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))
    refused_before = metric(REFUSED, reason="origin")

    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(_upgrade_head(gateway.port, gateway.path, token, Origin="http://evil.example"))
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert answer.startswith(b"HTTP/1.1 403 "), answer
            writer.close()

    run_async(scenario())
    assert metric(REFUSED, reason="origin") == refused_before + 1


def test_the_missing_token_refusal_reads_like_tornados(console_db, gateway_config):
    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            code, reason = await read_close(await gateway.connect(None))
            assert (code, reason) == (1008, "missing or malformed console token")

    run_async(scenario())
