"""The console relay's sockets once a tunnel is open: asyncio protocols instead of Tornado's streams.

Tornado serves the upgrade, the token, the desktop's login and the recording's start. Then, when both
sides are plain sockets (ws:// on loopback or behind a proxy that ends TLS; docs/gateway.md), the relay
takes the two sockets from Tornado's streams and drives them with protocols of the running loop (uvloop's,
by default). Each read is one callback: a browser's frame is parsed, unmasked, framed as RFB and written
to the desktop within it, and a desktop's read goes into the tunnel's buffer and out as one WebSocket frame
of slices of it. Tornado's stream reads cost a future and a coroutine step per frame header and payload;
here there are none (`vdi bench tunnel`).

Backpressure is the transports' flow control: the browser's transport pauses the desktop's reads while it
holds anything not yet sent (the pieces it holds are views of the read buffer, reused only after), and the
desktop's transport pauses the browser's reads above its high-water mark.

The WebSocket side follows RFC 6455: client frames must be masked, control frames are short and whole,
fragments are gathered up to the handler's maximum message size, pings are answered, the closing
handshake is completed or abandoned after a timeout, and the gateway pings the browser on the same
schedule as Tornado's `websocket_ping_interval` and `websocket_ping_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
from tornado.iostream import IOStream
from tornado.util import _websocket_mask

from gateway.ws_frames import frame_header

log = logging.getLogger(__name__)

OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009
# How long the closing handshake may take before the browser's socket is dropped (as in Tornado).
CLOSE_TIMEOUT_S = 5.0
# Writes to the desktop queue this much before the browser's reads pause.
DESKTOP_HIGH_WATER = 256 * 1024

Piece = bytes | bytearray | memoryview
# The browser's reads between payloads go into one buffer of this size that every tunnel of the process
# shares: a read and its parsing happen in one callback, and the parser copies whatever it keeps, so the
# buffer is free again when the callback returns (an idle tunnel costs none of it). A frame with a larger
# payload gets a buffer of its own, which the next reads fill directly.
SCRATCH_BYTES = 256 * 1024
_SCRATCH = memoryview(bytearray(SCRATCH_BYTES))
# Payloads from this size on are unmasked in place with numpy; smaller ones by Tornado's C function.
LARGE_PAYLOAD = 4096


def unmask(mask: bytes, payload: bytearray) -> None:
    """XOR the payload with its masking key in place (RFC 6455 section 5.3), eight bytes at a time."""
    words = len(payload) // 8
    if words:
        key = np.frombuffer(mask * 2, dtype=np.uint64)[0]
        block = np.frombuffer(payload, dtype=np.uint64, count=words)
        np.bitwise_xor(block, key, out=block)
    for index in range(words * 8, len(payload)):
        payload[index] ^= mask[index % 4]


class WireError(Exception):
    """The browser broke the WebSocket protocol: the close code and a reason for it."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def can_take(stream: IOStream) -> bool:
    """A stream whose socket the relay may take: plain TCP (a TLS session stays with its stream), with
    nothing queued to write."""
    return type(stream) is IOStream and not stream.writing()  # SSLIOStream is a subclass: excluded


def take_socket(stream: IOStream) -> tuple[socket.socket, bytes]:
    """A duplicate of the stream's socket and the bytes the stream had read but nobody consumed; the
    stream is then closed without telling anyone (its close callback is removed first)."""
    buffered = bytes(stream._read_buffer[: stream._read_buffer_size])
    sock = stream.socket.dup()
    sock.setblocking(False)
    stream.set_close_callback(None)
    stream.close()
    return sock, buffered


class BrowserReader:
    """RFC 6455 framing of the browser's side (section 5.2): whole messages out of masked frames."""

    def __init__(self, max_message: int, on_message: Callable[[int, bytes | bytearray], None]) -> None:
        self._max_message = max_message
        self._on_message = on_message
        # Reads land in the shared scratch between frames' payloads; a header split between two reads
        # waits in _pending.
        self._scratch = _SCRATCH
        self._pending = b""
        # The frame being received: its header fields, and its payload, into which reads go directly.
        self._opcode = 0
        self._fin = False
        self._mask = b""
        self._payload: bytearray | None = None
        self._payload_view = memoryview(b"")
        self._filled = 0
        # A fragmented message: its opcode and its fragments so far.
        self._message_opcode: int | None = None
        self._fragments: list[bytes | bytearray] = []
        self._fragments_size = 0

    def get_buffer(self) -> memoryview:
        """Where the next read goes: the rest of a large frame's payload, else the scratch buffer."""
        if self._payload is not None:
            return self._payload_view[self._filled :]
        return self._scratch

    def updated(self, size: int) -> None:
        """`size` bytes were read into get_buffer(): every message they complete goes to on_message
        (raises WireError)."""
        if self._payload is not None:
            self._filled += size
            if self._filled == len(self._payload):
                self._payload_done()
            return
        self._parse(self._scratch[:size])

    def feed(self, data: bytes) -> None:
        """As if `data` had been read (bytes the upgrade's stream had already taken, and tests)."""
        view = memoryview(data)
        while view:
            buffer = self.get_buffer()
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            view = view[size:]
            self.updated(size)

    def _payload_done(self) -> None:
        payload = self._payload
        assert payload is not None
        self._payload, self._payload_view = None, memoryview(b"")
        unmask(self._mask, payload)
        self._frame(payload)

    def _parse(self, view: memoryview) -> None:
        if self._pending:
            view = memoryview(self._pending + bytes(view))
            self._pending = b""
        at, end = 0, len(view)
        while at < end:
            if end - at < 2:
                self._pending = bytes(view[at:])
                return
            first, second = view[at], view[at + 1]
            if first & 0x70:
                raise WireError(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
            if not second & 0x80:
                raise WireError(CLOSE_PROTOCOL_ERROR, "browser frames must be masked")
            length, header = second & 0x7F, 6
            if length == 126:
                header = 8
            elif length == 127:
                header = 14
            if end - at < header:
                self._pending = bytes(view[at:])
                return
            if length == 126:
                length = struct.unpack_from("!H", view, at + 2)[0]
            elif length == 127:
                length = struct.unpack_from("!Q", view, at + 2)[0]
            self._opcode, self._fin = first & 0x0F, bool(first & 0x80)
            self._check_frame(length)
            self._mask = bytes(view[at + header - 4 : at + header])
            at += header
            if end - at >= length:
                if length < LARGE_PAYLOAD:
                    payload: bytes | bytearray = _websocket_mask(self._mask, bytes(view[at : at + length]))
                else:
                    payload = bytearray(view[at : at + length])
                    unmask(self._mask, payload)
                at += length
                self._frame(payload)
                continue
            # The rest of this payload is read straight into it (get_buffer), not through the scratch.
            self._payload = bytearray(length)
            self._payload_view = memoryview(self._payload)
            self._filled = end - at
            self._payload_view[: self._filled] = view[at:end]
            return

    def _check_frame(self, length: int) -> None:
        opcode = self._opcode
        if opcode >= OPCODE_CLOSE:
            if opcode not in (OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG):
                raise WireError(CLOSE_PROTOCOL_ERROR, "unknown control frame")
            if not self._fin or length > 125:
                raise WireError(CLOSE_PROTOCOL_ERROR, "control frames must be whole and short")
            return
        if opcode not in (OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY):
            raise WireError(CLOSE_PROTOCOL_ERROR, "unknown data frame")
        if (opcode == OPCODE_CONTINUATION) != (self._message_opcode is not None):
            raise WireError(CLOSE_PROTOCOL_ERROR, "fragments out of order")
        if self._fragments_size + length > self._max_message:
            raise WireError(CLOSE_TOO_BIG, "message too big")

    def _frame(self, payload: bytes | bytearray) -> None:
        opcode = self._opcode
        if opcode >= OPCODE_CLOSE:
            self._on_message(opcode, payload)
            return
        if opcode != OPCODE_CONTINUATION and self._fin:
            self._on_message(opcode, payload)
            return
        if opcode != OPCODE_CONTINUATION:
            self._message_opcode = opcode
        self._fragments.append(payload)
        self._fragments_size += len(payload)
        if self._fin:
            message_opcode, fragments = self._message_opcode, self._fragments
            self._message_opcode, self._fragments, self._fragments_size = None, [], 0
            assert message_opcode is not None
            self._on_message(message_opcode, b"".join(fragments))


class Wire:
    """Both sockets of one open tunnel. `relay` is the gateway's ConsoleRelay: its framers, policy,
    recorder and counters decide what crosses; the wire only moves bytes and speaks WebSocket."""

    def __init__(
        self,
        relay,
        read_buffer,
        *,
        max_message: int,
        ping_interval_s: float,
        ping_timeout_s: float,
    ) -> None:
        self.relay = relay
        self._buffer = read_buffer
        self.reader = BrowserReader(max_message, self._message)
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self.browser: asyncio.Transport | None = None
        self.desktop: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._browser_paused = False
        self._desktop_reading = False
        self._close_sent = False
        self._close_received = False
        self._timer: asyncio.TimerHandle | None = None
        self._pong_due: float | None = None
        self._held = 0  # bytes of the read buffer referenced by a queued write to the browser
        # What the desktop sent before the relay started (read by Tornado's stream, or by the transport).
        self._early_desktop = b""

    async def start(
        self,
        browser: socket.socket,
        browser_bytes: bytes,
        desktop: socket.socket | None,
        desktop_bytes: bytes = b"",
    ) -> None:
        """Connect both protocols; the desktop's reads start with `start_desktop` (after the browser's
        RFB handshake, when the gateway logged in). Bytes the streams had read are handled first. Without
        a desktop (a console refused before it had one) the wire carries the browser's closing handshake."""
        loop = asyncio.get_running_loop()
        self._early_desktop = desktop_bytes
        try:
            if desktop is not None:
                await loop.connect_accepted_socket(lambda: _DesktopProtocol(self), sock=desktop)
            await loop.connect_accepted_socket(lambda: _BrowserProtocol(self), sock=browser)
        except BaseException:
            # A socket without its transport is still ours to close; a transport closes its own.
            for transport, sock in ((self.desktop, desktop), (self.browser, browser)):
                if transport is None and sock is not None:
                    sock.close()
                else:
                    transport.abort()
            if not self.done.done():
                self.done.set_result(None)
            raise
        if self.desktop is not None and not self._desktop_reading:
            self.desktop.pause_reading()
        self._schedule_ping(self._ping_interval_s)
        if browser_bytes:
            self.browser_data(browser_bytes)

    # -- the browser ------------------------------------------------------------------------------

    def browser_data(self, data: bytes) -> None:
        """Bytes from the browser that did not come through the transport (read by the upgrade's stream)."""
        self._browser_input(self.reader.feed, data)

    def browser_read(self, size: int) -> None:
        self._browser_input(self.reader.updated, size)

    def _browser_input(self, handle, arg) -> None:
        if self._close_sent and self._close_received:
            return
        try:
            handle(arg)
        except WireError as exc:
            log.warning("console closed: session %s: %s", self.relay.session_id, exc.reason)
            self.relay.end(exc.code, exc.reason)

    def _message(self, opcode: int, payload: bytes | bytearray) -> None:
        if opcode == OPCODE_BINARY:
            if not self._close_sent:
                self.relay.on_message(payload)
        elif opcode == OPCODE_TEXT:
            if not self._close_sent:
                self.relay.on_message(payload.decode("utf-8", errors="replace"))
        elif opcode == OPCODE_PING:
            self._send(OPCODE_PONG, [payload])
        elif opcode == OPCODE_PONG:
            self._pong_due = None
        else:
            self._close_frame_received(payload)

    def _close_frame_received(self, payload: bytes) -> None:
        self._close_received = True
        if not self._close_sent:
            # Echo the browser's code (section 5.5.1), then end the tunnel like Tornado's on_close.
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            self._close_sent = True
            self._send(OPCODE_CLOSE, [struct.pack("!H", code)] if code else [])
        if self.browser is not None:
            self.browser.close()

    def send(self, data: bytes | str) -> None:
        """A whole message to the browser (binary for bytes, text for str); dropped once closing."""
        if self._close_sent:
            return
        if isinstance(data, str):
            self._send(OPCODE_TEXT, [data.encode("utf-8")])
        else:
            self._send(OPCODE_BINARY, [data])

    def _send(self, opcode: int, pieces: Sequence[Piece]) -> None:
        if self.browser is None or self.browser.is_closing():
            return
        size = sum(map(len, pieces))
        self.browser.writelines([frame_header(size, opcode), *pieces])

    def close(self, code: int | None, reason: str) -> None:
        """Start the closing handshake (section 7.1.2): the close frame now, the socket when the browser
        answers or after CLOSE_TIMEOUT_S; the desktop's side at once."""
        if self.desktop is not None:
            self.desktop.close()
        if self._close_sent:
            return
        self._close_sent = True
        payload = [struct.pack("!H", code) + reason.encode("utf-8")] if code is not None else []
        self._send(OPCODE_CLOSE, payload)
        if self.browser is None:
            return
        if self._close_received:
            self.browser.close()
        else:
            self._cancel_timer()
            self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.browser.abort)

    def browser_lost(self) -> None:
        self._cancel_timer()
        if self.desktop is not None:
            self.desktop.close()
        if not self.done.done():
            self.done.set_result(None)

    def browser_drained(self) -> None:
        """Everything queued to the browser is sent: the read buffer is free again."""
        self._browser_paused = False
        if self._held:
            self._buffer.used(self._held)
            self._held = 0
        if self._desktop_reading and self.desktop is not None and not self.desktop.is_closing():
            self.desktop.resume_reading()

    # -- pings (as Tornado's websocket_ping_interval and websocket_ping_timeout) -----------------

    def _schedule_ping(self, delay: float) -> None:
        if delay > 0:
            self._timer = asyncio.get_running_loop().call_later(delay, self._ping)

    def _ping(self) -> None:
        self._timer = None
        if self._close_sent:
            return
        if self._pong_due is not None:
            self.relay.end(None, "ping timed out")
            return
        self._pong_due = asyncio.get_running_loop().time() + self._ping_timeout_s
        self._send(OPCODE_PING, [])
        # The pong is checked at the next round; with a timeout shorter than the interval, sooner.
        self._schedule_ping(min(self._ping_interval_s, self._ping_timeout_s) or self._ping_interval_s)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the desktop ------------------------------------------------------------------------------

    def start_desktop(self) -> None:
        """Start relaying the desktop's stream (the browser's RFB handshake is over)."""
        self._desktop_reading = True
        early, self._early_desktop = self._early_desktop, b""
        if early:
            # Not in the read buffer: the transport may keep views of it for as long as it likes.
            self._forward(memoryview(early))
        if self.desktop is not None and not self._browser_paused and not self.desktop.is_closing():
            self.desktop.resume_reading()

    def desktop_data(self, size: int) -> None:
        """`size` bytes were read into the buffer."""
        if not self._desktop_reading:
            # uvloop starts reading an adopted socket whatever connection_made asked: keep what came
            # early for start_desktop, and stop.
            self._early_desktop += self._buffer.view[:size]
            if self.desktop is not None:
                self.desktop.pause_reading()
            return
        self._forward(self._buffer.view[:size])
        if self._browser_paused:
            # The browser's transport holds views of the buffer: no reads into it until they are sent.
            self._held = max(self._held, size)
            if self.desktop is not None:
                self.desktop.pause_reading()
        else:
            self._buffer.used(size)

    def _forward(self, data: memoryview) -> None:
        relay = self.relay
        framers = relay._rfb
        try:
            pieces = [data] if framers is None else framers.server.feed(data)
        except Exception as exc:
            relay.desktop_error(exc)
            return
        if not pieces:
            return
        if relay._recorder is not None:
            # A copy (the buffer is reused), a stamp and a queue put: the writer thread does the rest.
            relay._recorder.server(b"".join(pieces))
        forwarded = sum(map(len, pieces))
        if self.browser is not None and not self._close_sent:
            self.browser.writelines([frame_header(forwarded), *pieces])
        relay.relayed_to_client(forwarded)

    def write_desktop(self, pieces: Sequence[Piece]) -> None:
        if self.desktop is not None and not self.desktop.is_closing():
            self.desktop.writelines(pieces)


class _BrowserProtocol(asyncio.BufferedProtocol):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they have its methods.
        transport = cast(asyncio.Transport, transport)
        # Anything queued pauses the desktop's reads (see Wire.desktop_data).
        transport.set_write_buffer_limits(high=0, low=0)
        self.wire.browser = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.wire.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.wire.browser_read(nbytes)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.wire._browser_paused = True

    def resume_writing(self) -> None:
        self.wire.browser_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire.browser_lost()
        self.wire.relay.browser_closed()


class _DesktopProtocol(asyncio.BufferedProtocol):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they have its methods.
        transport = cast(asyncio.Transport, transport)
        transport.pause_reading()
        transport.set_write_buffer_limits(high=DESKTOP_HIGH_WATER)
        self.wire.desktop = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.wire._buffer.view

    def buffer_updated(self, nbytes: int) -> None:
        self.wire.desktop_data(nbytes)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        browser = self.wire.browser
        if browser is not None and not browser.is_closing():
            browser.pause_reading()

    def resume_writing(self) -> None:
        browser = self.wire.browser
        if browser is not None and not browser.is_closing():
            browser.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire.relay.desktop_closed()
