"""Writes of the relay without copies: server-to-browser WebSocket binary frames (RFC 6455 section 5.2)
and client messages to the desktop.

Tornado's `write_message` joins header and payload into one new bytes object and wraps the write in a
task of its own; for framebuffer data that is a copy of every byte and a task per message. Here the
header and the payload's pieces (slices of the relay's read buffer) go to the socket in one `sendmsg`
when the stream has nothing queued, and what the socket did not take is queued on the stream, in order,
as views. A server's frames are never masked (section 5.1), so the payload needs no pass over it.

TLS streams (wss://) cannot use the socket directly: their pieces are queued on the stream, small ones
joined so that a frame header never travels alone.
"""

from __future__ import annotations

import struct
from asyncio import Future
from collections.abc import Sequence

from tornado.iostream import IOStream, SSLIOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketProtocol

OPCODE_BINARY = 0x2
FIN = 0x80
# Pieces below this are joined rather than queued one by one (Tornado copies them anyway).
SMALL_PIECE = 2048
# Linux's IOV_MAX: sendmsg takes at most this many buffers.
MAX_IOVECS = 1024

Piece = bytes | bytearray | memoryview


def frame_header(size: int, opcode: int = OPCODE_BINARY) -> bytes:
    """FIN, the opcode and the payload length, unmasked (7-bit, 16-bit or 64-bit length)."""
    if size < 126:
        return struct.pack("!BB", FIN | opcode, size)
    if size <= 0xFFFF:
        return struct.pack("!BBH", FIN | opcode, 126, size)
    return struct.pack("!BBQ", FIN | opcode, 127, size)


def send_binary(connection: WebSocketProtocol | None, pieces: Sequence[Piece]) -> Future | None:
    """One binary message made of `pieces`; a future when part of it is queued, None when all is sent.

    Raises WebSocketClosedError when the browser's side is closed or closing. The pieces must not
    change until the returned future is done (the relay awaits it before reading more).
    """
    if connection is None or connection.is_closing():
        raise WebSocketClosedError()
    size = sum(len(piece) for piece in pieces)
    try:
        return write_pieces(connection.stream, [frame_header(size), *pieces])
    except StreamClosedError:
        raise WebSocketClosedError() from None


def write_pieces(stream: IOStream, pieces: Sequence[Piece]) -> Future | None:
    """Write `pieces` in order without joining them: one sendmsg when nothing is queued, the rest queued
    as views. A future when something is queued, None when all is sent; StreamClosedError if closed."""
    if stream.closed():
        raise StreamClosedError(real_error=stream.error)
    if isinstance(stream, SSLIOStream) or stream.writing() or len(pieces) > MAX_IOVECS:
        return _queue(stream, pieces)
    return _send_now(stream, pieces, sum(len(piece) for piece in pieces))


def _send_now(stream: IOStream, message: Sequence[Piece], total: int) -> Future | None:
    try:
        sent = stream.socket.sendmsg(message)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        # A reset or broken pipe: let the stream find out and close itself as it usually does.
        sent = 0
    if sent == total:
        return None
    return _queue(stream, _rest(message, sent))


def _rest(message: Sequence[Piece], sent: int) -> list[Piece]:
    """The part of `message` after its first `sent` bytes, as views (no copy)."""
    for index, piece in enumerate(message):
        if sent < len(piece):
            return [memoryview(piece)[sent:], *message[index + 1 :]]
        sent -= len(piece)
    return []


def _queue(stream: IOStream, message: Sequence[Piece]) -> Future:
    future = None
    small: list[Piece] = []
    for piece in message:
        if len(piece) < SMALL_PIECE:
            small.append(piece)
            continue
        if small:
            stream.write(b"".join(small))
            small = []
        future = stream.write(piece)
    if small:
        future = stream.write(b"".join(small))
    assert future is not None
    return future
