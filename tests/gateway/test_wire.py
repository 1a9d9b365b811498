"""The relay's sockets after the upgrade (gateway/wire.py): RFC 6455 framing of the browser's side, the
closing handshake and pings, and the switch back to Tornado's streams."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from tornado.util import _websocket_mask

from gateway import app as gateway_app
from gateway.wire import CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, OPCODE_BINARY, BrowserReader, Wire, WireError
from tests.fixtures.gateway import (
    ORIGIN,
    RFB_BANNER,
    eventually,
    receive_until,
    run_async,
    running_gateway,
)


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A browser's frame (section 5.2): masked unless told otherwise."""
    size = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = struct.pack(">BB", first, mask_bit | size)
    elif size <= 0xFFFF:
        header = struct.pack(">BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack(">BBQ", first, mask_bit | 127, size)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + _websocket_mask(key, payload)


def reader(max_message: int = 1 << 20) -> tuple[BrowserReader, list[tuple[int, bytes]]]:
    messages: list[tuple[int, bytes]] = []
    return BrowserReader(max_message, lambda opcode, payload: messages.append((opcode, payload))), messages


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 300_000])
def test_messages_of_every_length_come_out_whole_however_the_bytes_arrive(size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = frame(OPCODE_BINARY, payload) + frame(OPCODE_BINARY, b"next")
    for step in (1, 7, 4096, len(data)):
        parser, messages = reader()
        for at in range(0, len(data), step):
            parser.feed(data[at : at + step])
        assert messages == [(OPCODE_BINARY, payload), (OPCODE_BINARY, b"next")], step


def test_fragments_are_joined_and_a_ping_between_them_is_answered_first():
    parser, messages = reader()
    parser.feed(
        frame(OPCODE_BINARY, b"RFB ", fin=False)
        + frame(0x9, b"are you there")
        + frame(0x0, b"003.", fin=False)
        + frame(0x0, b"008\n")
    )
    assert messages == [(0x9, b"are you there"), (OPCODE_BINARY, b"RFB 003.008\n")]


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (frame(OPCODE_BINARY, b"x", masked=False), CLOSE_PROTOCOL_ERROR, "masked"),
        (frame(OPCODE_BINARY, b"x", rsv=0x40), CLOSE_PROTOCOL_ERROR, "reserved"),
        (frame(0x9, b"x" * 126), CLOSE_PROTOCOL_ERROR, "control"),
        (frame(0x9, b"x", fin=False), CLOSE_PROTOCOL_ERROR, "control"),
        (frame(0x0, b"x"), CLOSE_PROTOCOL_ERROR, "order"),
        (frame(0x3, b"x"), CLOSE_PROTOCOL_ERROR, "unknown"),
        (frame(OPCODE_BINARY, b"x" * 2048), CLOSE_TOO_BIG, "too big"),
        (frame(OPCODE_BINARY, b"x" * 600, fin=False) + frame(0x0, b"x" * 600), CLOSE_TOO_BIG, "too big"),
    ],
    ids=[
        "unmasked",
        "reserved-bits",
        "long-ping",
        "split-ping",
        "stray-continuation",
        "opcode",
        "big",
        "big-parts",
    ],
)
def test_frames_breaking_the_protocol_are_refused_with_a_code(data, code, reason):
    parser, messages = reader(max_message=1024)
    with pytest.raises(WireError) as refused:
        parser.feed(data)
    assert messages == []
    assert refused.value.code == code
    assert reason in refused.value.reason


class RawBrowser:
    """A WebSocket client that shows every frame, control frames included (a browser hides them)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, path: str, token: str) -> RawBrowser:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path}?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack(">H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack(">Q", await self.reader.readexactly(8))[0]
        assert not second & 0x80, "server frames are never masked"
        return first & 0x0F, await self.reader.readexactly(size)

    async def read_until(self, opcode: int) -> bytes:
        while True:
            got, payload = await self.read_frame()
            if got == opcode:
                return payload

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def closed_by_gateway(self) -> bool:
        return await self.reader.read() == b""


def test_pings_are_answered_and_a_close_is_echoed_before_the_socket_ends(
    console_db, fake_vnc, gateway_config
):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await RawBrowser.connect(gateway.port, gateway.path, token)
            assert await browser.read_until(OPCODE_BINARY) == RFB_BANNER
            browser.send(frame(0x9, b"ping 1"))
            assert await browser.read_until(0xA) == b"ping 1"
            browser.send(frame(OPCODE_BINARY, b"typed"))
            await eventually(lambda: bytes(fake_vnc.received) == b"typed", what="message at the desktop")
            browser.send(frame(0x8, struct.pack(">H", 1000) + b"bye"))
            assert await browser.read_until(0x8) == struct.pack(">H", 1000)
            assert await browser.closed_by_gateway()
            await eventually(lambda: len(gateway.app.tunnels) == 0, what="tunnel gone")
            await eventually(lambda: not fake_vnc.streams, what="desktop side closed")

    run_async(scenario())


def test_a_broken_frame_closes_the_tunnel_with_protocol_error(console_db, fake_vnc, gateway_config):
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await RawBrowser.connect(gateway.port, gateway.path, token)
            assert await browser.read_until(OPCODE_BINARY) == RFB_BANNER
            browser.send(frame(OPCODE_BINARY, b"not masked", masked=False))
            close = await browser.read_until(0x8)
            assert struct.unpack(">H", close[:2])[0] == CLOSE_PROTOCOL_ERROR
            assert b"masked" in close[2:]
            await eventually(lambda: not fake_vnc.streams, what="desktop side closed")
            assert fake_vnc.received == b""

    run_async(scenario())


def test_a_browser_that_stops_answering_pings_is_closed(console_db, fake_vnc, gateway_config, monkeypatch):
    monkeypatch.setattr(gateway_app, "PING_INTERVAL_S", 0.2)
    monkeypatch.setattr(gateway_app, "PING_TIMEOUT_S", 0.2)
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await RawBrowser.connect(gateway.port, gateway.path, token)
            assert await browser.read_until(0x9) == b""  # a ping, left unanswered
            await browser.read_until(0x8)
            await eventually(lambda: len(gateway.app.tunnels) == 0, what="tunnel gone")

    run_async(scenario())


def test_tunnels_stay_on_tornados_streams_when_the_protocol_relay_is_off(
    console_db, fake_vnc, gateway_config
):
    config = gateway_config.model_copy(
        update={"gateway": gateway_config.gateway.model_copy(update={"protocol_relay": False})}
    )
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await receive_until(conn, RFB_BANNER)
            (relay,) = [relay for relays in gateway.app.tunnels._by_session.values() for relay in relays]
            assert relay._wire is None
            conn.write_message(b"both ways", binary=True)
            await receive_until(conn, b"both ways")
            conn.close()

    run_async(scenario())


def test_consoles_of_one_session_opened_at_once_each_count_once_against_the_limit(
    console_db, fake_vnc, gateway_config
):
    """gateway.max_tunnels_per_session is 2: two consoles opened together both open, a third is refused
    (a tunnel that is being moved to the protocols must not be counted as open and as opening)."""
    session = console_db.add_session(vnc_port=fake_vnc.port)
    tokens = [console_db.issue(session) for _ in range(2)]

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            for _ in range(5):
                conns = await asyncio.gather(*(gateway.connect(token) for token in tokens))
                for conn in conns:
                    assert (await receive_until(conn, RFB_BANNER)).startswith(RFB_BANNER)
                for conn in conns:
                    conn.close()
                await eventually(lambda: len(gateway.app.tunnels) == 0, what="consoles closed")
                tokens[:] = [console_db.issue(session) for _ in range(2)]

    run_async(scenario())


def test_a_tunnel_whose_socket_cannot_go_to_the_event_loop_is_closed_and_forgotten(
    console_db, fake_vnc, gateway_config, monkeypatch
):
    """The browser's socket is gone by the time the relay hands it to the loop (closed under it here):
    the console is refused as failed, the desktop's side is closed and the tunnel leaves the registry."""
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))
    start = Wire.start

    async def start_with_a_dead_browser_socket(self, browser, browser_bytes, desktop, desktop_bytes):
        browser.close()
        await start(self, browser, browser_bytes, desktop, desktop_bytes)

    monkeypatch.setattr(Wire, "start", start_with_a_dead_browser_socket)

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            assert await conn.read_message() is None  # the gateway's end of the browser's socket closed
            await eventually(lambda: len(gateway.app.tunnels) == 0, what="tunnel forgotten")
            await eventually(lambda: not fake_vnc.streams, what="desktop side closed")

    run_async(scenario())
