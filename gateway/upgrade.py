"""The gateway's own WebSocket upgrade for consoles on plain (non-TLS) listeners.

Every connection the gateway accepts on a plain listener is read here first, up to the end of its request
head. A console's WebSocket upgrade that Tornado would accept (GET on a console path, HTTP/1.1, a valid
RFC 6455 version and key, no body, an allowed or absent Origin) is answered here with the 101 and opened
by the same code as Tornado's (relay.Console); its socket never becomes a Tornado request, handler or
stream. Anything else (health, metrics, 404s, a plain GET, a refused origin, a malformed head) goes to
Tornado's HTTP server with the bytes already read, and is served exactly as before. A TLS listener stays
entirely on Tornado (a TLS session cannot be read here first).

Tornado's HTTP server and WebSocket upgrade were about a third of the gateway's CPU per new tunnel
(vdi bench tunnel, docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Collection

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.log import access_log
from tornado.websocket import WebSocketProtocol13

from gateway import wire
from gateway.relay import (
    CLOSE_INTERNAL_ERROR,
    Console,
    origin_allowed,
    request_id_from_query,
)
from monitoring import logs

log = logging.getLogger(__name__)

# The end of a request head, as Tornado finds it.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_WEBSOCKET_VERSIONS = ("7", "8", "13")
# How long a connection answered 431 may go on sending before it is closed.
LINGER_S = 2.0
# A browser's upgrade request is well under this; a longer head (cookies) takes more reads.
READ_BYTES = 8192
_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class GatewayServer(HTTPServer):
    """Tornado's HTTP server, with consoles' upgrades on plain listeners served by `upgrades`."""

    def initialize(self, *args, upgrades: ConsoleUpgrades | None = None, **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self.upgrades = upgrades

    def handle_stream(self, stream: IOStream, address: tuple):
        if self.upgrades is None or type(stream) is not IOStream:  # SSLIOStream: Tornado's alone
            return super().handle_stream(stream, address)
        return self.upgrades.serve(self, stream, address)

    def serve_with(self, stream: IOStream, address: tuple, head: bytes) -> None:
        """Tornado serves the connection, reading `head` (already taken from the socket) first."""
        stream._read_buffer += head
        stream._read_buffer_size += len(head)
        super().handle_stream(stream, address)


class ConsoleRequest:
    """A console's WebSocket upgrade the gateway answers itself."""

    __slots__ = ("key", "path", "subprotocol", "uri")

    def __init__(self, uri: str, path: str, key: str, subprotocol: str | None) -> None:
        self.uri, self.path, self.key, self.subprotocol = uri, path, key, subprotocol

    def response(self) -> bytes:
        accept = WebSocketProtocol13.compute_accept_value(self.key)
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept}",
        ]
        if self.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {self.subprotocol}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin1")


def console_request(head: bytes, paths: Collection[str], allowed_origins: list[str]) -> ConsoleRequest | None:
    """The head's console upgrade when it is one Tornado would accept as is; None for anything else
    (Tornado then answers it: 400, 403, 404, 426 or the resource)."""
    try:
        text = head.decode("latin1").lstrip("\r\n")
        eol = text.find("\n")
        start = httputil.parse_request_start_line(text[:eol].rstrip("\r"))
        headers = httputil.HTTPHeaders.parse(text[eol:])
    except (httputil.HTTPInputError, ValueError):
        return None
    path = start.path.partition("?")[0]
    if start.method != "GET" or start.version != "HTTP/1.1" or path not in paths:
        return None
    if headers.get("Upgrade", "").lower() != "websocket":
        return None
    if "upgrade" not in (part.strip().lower() for part in headers.get("Connection", "").split(",")):
        return None
    key = headers.get("Sec-Websocket-Key")
    if not key or not headers.get("Host") or headers.get("Sec-Websocket-Version") not in _WEBSOCKET_VERSIONS:
        return None
    if "Content-Length" in headers or "Transfer-Encoding" in headers:
        return None
    origin = headers.get("Origin") if "Origin" in headers else headers.get("Sec-Websocket-Origin")
    if origin is not None and not origin_allowed(origin, allowed_origins):
        return None  # Tornado refuses it (403), counts it and logs it, as it always has
    subprotocol = None
    if "Sec-Websocket-Protocol" in headers:
        offered = [part.strip() for part in headers["Sec-Websocket-Protocol"].split(",")]
        # noVNC before 1.0 insists on the "binary" subprotocol; current noVNC offers none.
        subprotocol = "binary" if "binary" in offered else None
    return ConsoleRequest(start.path, path, key, subprotocol)


class ConsoleUpgrades:
    """Reads each new connection's request head and opens consoles; see the module's docstring."""

    def __init__(self, app, *, handshake_timeout_s: float, max_head_bytes: int) -> None:
        self.app = app
        self.paths = frozenset(app.console_paths)
        self.handshake_timeout_s = handshake_timeout_s
        self.max_head_bytes = max_head_bytes

    async def serve(self, server: GatewayServer, stream: IOStream, address: tuple) -> None:
        sock = stream.socket
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.handshake_timeout_s):
                head, rest = await self._read_head(sock)
        except (TimeoutError, OSError):
            sock.close()  # slow or gone before its request was whole, as Tornado's idle timeout
            return
        if head is None:
            return
        settings = self.app.settings
        request = console_request(head, self.paths, settings["gateway"].allowed_origins)
        if request is None:
            server.serve_with(stream, address, head + rest)
            return
        # The broker request that issued the token named itself in the URL (`rid`, docs/logging.md).
        logs.bind(
            request_id=request_id_from_query(request.uri) or logs.new_request_id(), user=None, session=None
        )
        try:
            await asyncio.get_running_loop().sock_sendall(sock, request.response())
        except OSError:
            sock.close()
            return
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug(
                "101 GET %s (%s) %.2fms", request.path, address[0], 1000.0 * (time.monotonic() - started)
            )
        console = LeanConsole(
            sock,
            rest,
            max_message=settings["websocket_max_message_size"],
            ping_interval_s=settings.get("websocket_ping_interval") or 0.0,
            ping_timeout_s=settings.get("websocket_ping_timeout") or 0.0,
            **self.app.relay_args,
        )
        await console.open(request.uri, request.path)

    async def _read_head(self, sock: socket.socket) -> tuple[bytes | None, bytes]:
        """The request head and the bytes after it; (None, b"") when the socket was closed here (the
        peer left, or the head is larger than allowed: 431)."""
        loop = asyncio.get_running_loop()
        data = b""
        while True:
            chunk = await loop.sock_recv(sock, min(READ_BYTES, self.max_head_bytes + 1 - len(data)))
            if not chunk:
                sock.close()
                return None, b""
            data += chunk
            found = _HEAD_END.search(data)
            if found is not None and found.end() <= self.max_head_bytes:
                return data[: found.end()], data[found.end() :]
            if len(data) > self.max_head_bytes or found is not None:
                await _answer_and_close(sock, _TOO_LARGE)
                return None, b""


async def _answer_and_close(sock: socket.socket, answer: bytes) -> None:
    """Send the answer, then take (and drop) what the peer is still sending for a moment before closing:
    closing with unread bytes would reset the connection, and the peer could lose the answer."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError, TimeoutError):
        await loop.sock_sendall(sock, answer)
        sock.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER_S):
            while await loop.sock_recv(sock, READ_BYTES):
                pass
    sock.close()


class LeanConsole(Console):
    """A console whose WebSocket the gateway upgraded itself: the browser's socket goes to the wire with
    the desktop's once the tunnel is open, or alone to carry the closing handshake of a refusal."""

    def __init__(
        self,
        sock: socket.socket,
        early: bytes,
        *,
        max_message: int,
        ping_interval_s: float,
        ping_timeout_s: float,
        **relay_args,
    ) -> None:
        self._setup(**relay_args)
        self._sock = sock
        self._early = early
        self._max_message = max_message
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._refusal: tuple[int | None, str | None] | None = None

    async def open(self, uri: str, path: str) -> None:
        try:
            await self._open_tunnel(uri)
        except Exception:
            # As Tornado's handler: the path only, since the URI carries the token.
            log.exception("uncaught exception in console relay %s", path)
            self.end(CLOSE_INTERNAL_ERROR, "console relay failed")
        if self._wire is None:
            await self._close_refused()

    async def _close_refused(self) -> None:
        code, reason = self._refusal or (CLOSE_INTERNAL_ERROR, "console relay failed")
        self._wire = wire.Wire(self, None, max_message=self._max_message, ping_interval_s=0, ping_timeout_s=0)
        try:
            await self._wire.start(self._sock, self._early, None, b"")
        except OSError:
            return  # the socket was closed by the wire's start
        self._wire.close(code, reason or "")

    def _close_browser(self, code: int | None, reason: str | None) -> None:
        # Sent once the opening is over (open), on the wire: the refusal's close frame and the closing
        # handshake, as Tornado's handler does.
        if self._refusal is None:
            self._refusal = (code, reason)

    def _write_browser(self, message: bytes | str) -> None:
        """Nothing is sent to the browser before the tunnel is on the wire."""

    def _browser_nodelay(self) -> None:
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def _take_sockets(self, upstream: IOStream) -> None:
        if not wire.can_take(upstream):
            raise OSError("the desktop's stream has writes queued")
        await self._hand_to_wire(
            self._sock,
            self._early,
            upstream,
            max_message=self._max_message,
            ping_interval_s=self._ping_interval_s,
            ping_timeout_s=self._ping_timeout_s,
        )
