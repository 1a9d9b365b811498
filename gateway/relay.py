"""The console relay: one browser WebSocket (noVNC) to one desktop's VNC (RFB) TCP port.

The token's route says how the display is reached: "direct" TCP, or "ssh", a channel through the
host's sshd to the VNC port on its loopback (gateway/ssh_channel.py). Either way the relay reads
and writes one IOStream.

A tunnel opens only with a console token, consumed once through the shared database. Bytes
then flow both ways with backpressure: each side waits for its write to drain before reading
more, so a slow browser slows the desktop's stream instead of growing a buffer in the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from broker.db import Database
from broker.db.models import DesktopSession, utcnow
from broker.db.tokens import ConsoleTarget, TokenRefused, consume_token, mask
from gateway.config import GatewaySettings
from gateway.ssh_channel import SshChannels, SshRouteError
from monitoring.metrics import BYTES_RELAYED, TUNNELS_OPEN, TUNNELS_REFUSED, Direction, TunnelRefusal

log = logging.getLogger(__name__)

READ_CHUNK = 65536

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
MAX_CLOSE_REASON_BYTES = 123

# RFB KeyEvent and PointerEvent message types (RFC 6143 sections 7.5.4 and 7.5.5).
INPUT_MESSAGE_TYPES = (b"\x04", b"\x05")
INPUT_RECORD_INTERVAL_S = 5.0

_TO_DESKTOP = BYTES_RELAYED.labels(direction=Direction.CLIENT_TO_DESKTOP.value)
_TO_CLIENT = BYTES_RELAYED.labels(direction=Direction.DESKTOP_TO_CLIENT.value)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin value, lower-cased, with the default port made explicit."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query:
        return None
    return parts.scheme.lower(), parts.hostname.lower(), port


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """Exact match against the configured origins; scheme and host compare case-insensitively.

    Browsers omit a default port from Origin (RFC 6454 section 6.2), so "https://vdi.example"
    and "https://vdi.example:443" name the same origin.
    """
    key = _origin_key(origin)
    return key is not None and key in {_origin_key(entry) for entry in allowed}


def token_from_query(uri: str) -> str | None:
    """The console token of a request URI: `?token=…`, or websockify's `?path=…%3Ftoken%3D…` form."""
    query = parse_qs(urlsplit(uri).query)
    if query.get("token"):
        return query["token"][0]
    for nested in query.get("path", []):
        inner = parse_qs(urlsplit(nested).query)
        if inner.get("token"):
            return inner["token"][0]
    return None


def close_reason(text: str) -> str:
    """A close reason fits a control frame: at most 123 bytes of UTF-8 (RFC 6455 section 5.5)."""
    return text.encode("utf-8")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


class TunnelRegistry:
    """The open tunnels of one gateway process, by session id, so a session's consoles can be closed."""

    def __init__(self) -> None:
        self._by_session: dict[str, set[ConsoleRelay]] = {}
        # Tunnels of a session between their token's acceptance and their upstream's connection.
        self._opening: dict[str, int] = {}
        # Called at every new tunnel; the gateway starts its session watch from here, on the running loop.
        self.on_add: Callable[[], None] | None = None

    def reserve(self, session_id: str, limit: int) -> bool:
        """Hold one of the session's `limit` places for a tunnel being opened; False when all are taken.

        Counted with the tunnels still connecting, so two tokens used at the same moment cannot both
        slip under the limit while their displays are being reached.
        """
        held = len(self._by_session.get(session_id, ())) + self._opening.get(session_id, 0)
        if held >= limit:
            return False
        self._opening[session_id] = self._opening.get(session_id, 0) + 1
        return True

    def release(self, session_id: str) -> None:
        """The reserved place is taken by `add` or given up."""
        left = self._opening.get(session_id, 0) - 1
        if left > 0:
            self._opening[session_id] = left
        else:
            self._opening.pop(session_id, None)

    def add(self, relay: ConsoleRelay) -> None:
        self._by_session.setdefault(relay.session_id, set()).add(relay)
        if self.on_add is not None:
            self.on_add()

    def discard(self, relay: ConsoleRelay) -> None:
        relays = self._by_session.get(relay.session_id)
        if relays is not None:
            relays.discard(relay)
            if not relays:
                del self._by_session[relay.session_id]

    def __len__(self) -> int:
        return sum(len(relays) for relays in self._by_session.values())

    def sessions(self) -> list[str]:
        return list(self._by_session)

    def close_session(self, session_id: str, reason: str, code: int = CLOSE_NORMAL) -> int:
        """Close every tunnel of the session; returns how many were open."""
        relays = list(self._by_session.get(session_id, ()))
        for relay in relays:
            relay.end(code, reason)
        return len(relays)

    async def close_all(self, reason: str, timeout_s: float = 5.0) -> None:
        """Close every tunnel and wait (bounded) until browsers have seen the close frame."""
        relays = [relay for relays in self._by_session.values() for relay in relays]
        for relay in relays:
            relay.end(CLOSE_GOING_AWAY, reason)
        if relays:
            await asyncio.wait(
                [asyncio.ensure_future(relay.wait_closed()) for relay in relays], timeout=timeout_s
            )


def record_input(db: Session, session_id: str) -> None:
    db.execute(update(DesktopSession).where(DesktopSession.id == session_id).values(last_input_at=utcnow()))


class ConsoleRelay(WebSocketHandler):
    """One console tunnel. The URL carries the token; the token decides the desktop."""

    def initialize(
        self, settings: GatewaySettings, db: Database, tunnels: TunnelRegistry, ssh_channels: SshChannels
    ) -> None:
        self.gateway = settings
        self.db = db
        self.tunnels = tunnels
        self.ssh_channels = ssh_channels
        self.session_id = ""
        self.target: ConsoleTarget | None = None
        self.upstream: IOStream | None = None
        self._client_gone = False
        self._ended = False
        self._closed = asyncio.Event()
        self._opened_at = 0.0
        self._pump: asyncio.Task | None = None
        self._bytes_to_desktop = 0
        self._bytes_to_client = 0
        self._input_recorded_at = float("-inf")
        self._input_write: asyncio.Task | None = None

    # -- handshake -------------------------------------------------------------------------------

    def check_origin(self, origin: str) -> bool:
        # The token alone does not stop cross-site WebSocket hijacking: any page the user visits
        # could open a socket with a token it phished, so browsers must come from the portal.
        if origin_allowed(origin, self.gateway.allowed_origins):
            return True
        TUNNELS_REFUSED.labels(reason=TunnelRefusal.ORIGIN.value).inc()
        log.warning("console refused: origin %r is not allowed", origin)
        return False

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        # noVNC before 1.0 insists on the "binary" subprotocol; current noVNC offers none.
        return "binary" if "binary" in subprotocols else None

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Tornado's own version logs the request URI, which carries the token.
        log.error("uncaught exception in console relay %s", self.request.path, exc_info=(typ, value, tb))

    # -- opening ---------------------------------------------------------------------------------

    async def open(self, *args: str, **kwargs: str) -> None:
        target = await self._consume_token(token_from_query(self.request.uri or ""))
        if target is None or self._client_gone:
            return
        if not self.tunnels.reserve(target.session_id, self.gateway.max_tunnels_per_session):
            self._refuse_over_limit(target)
            return
        try:
            upstream = await self._connect(target)
            if upstream is None:
                return
            if self._client_gone:
                upstream.close()
                return
            self._start_tunnel(target, upstream)
        finally:
            self.tunnels.release(target.session_id)

    def _refuse_over_limit(self, target: ConsoleTarget) -> None:
        # OSSN-0008: one session must not fan out into unbounded tunnels to its desktop.
        TUNNELS_REFUSED.labels(reason=TunnelRefusal.LIMIT.value).inc()
        log.warning(
            "console refused: session %s already has %d tunnel(s) open (gateway.max_tunnels_per_session)",
            target.session_id,
            self.gateway.max_tunnels_per_session,
        )
        self.close(CLOSE_POLICY_VIOLATION, "too many consoles open for this session")

    async def _consume_token(self, token: str | None) -> ConsoleTarget | None:
        try:
            return await self.db.run(lambda session: consume_token(session, token))
        except TokenRefused as exc:
            TUNNELS_REFUSED.labels(reason=TunnelRefusal.TOKEN.value).inc()
            log.warning("console refused: %s (token %s)", exc.reason, mask(token) or "missing")
            self.close(CLOSE_POLICY_VIOLATION, exc.reason)
        except SQLAlchemyError:
            # Statement parameters in the error hold the token's hash, never the token itself.
            log.exception("console refused: database unavailable (token %s)", mask(token))
            self.close(CLOSE_INTERNAL_ERROR, "console service unavailable")
        return None

    async def _connect(self, target: ConsoleTarget) -> IOStream | None:
        if target.route == "ssh":
            return await self._connect_ssh(target)
        try:
            stream = await TCPClient().connect(
                target.host, target.port, timeout=self.gateway.connect_timeout_s
            )
        except (OSError, StreamClosedError, TimeoutError) as exc:
            TUNNELS_REFUSED.labels(reason=TunnelRefusal.UPSTREAM.value).inc()
            log.warning(
                "console refused: desktop display %s:%d of session %s unreachable: %s",
                target.host,
                target.port,
                target.session_id,
                str(exc) or type(exc).__name__,
            )
            self.close(CLOSE_INTERNAL_ERROR, "desktop display unreachable")
            return None
        # RFB is interactive: a pointer move must not wait for Nagle's algorithm to fill a segment.
        stream.set_nodelay(True)
        return stream

    async def _connect_ssh(self, target: ConsoleTarget) -> IOStream | None:
        try:
            return await self.ssh_channels.open_stream(
                target.ssh, target.host, target.port, host_name=target.host_name or ""
            )
        except SshRouteError as exc:
            TUNNELS_REFUSED.labels(reason=TunnelRefusal.UPSTREAM_SSH.value).inc()
            log.warning(
                "console refused: desktop display %s:%d of session %s on host %s unreachable over ssh (%s): %s",
                target.host,
                target.port,
                target.session_id,
                target.host_name,
                exc.result.value,
                exc,
            )
            # The browser learns only that it failed; which host key or user is for the log.
            self.close(CLOSE_INTERNAL_ERROR, "desktop display unreachable")
            return None

    def _start_tunnel(self, target: ConsoleTarget, upstream: IOStream) -> None:
        self.target, self.upstream, self.session_id = target, upstream, target.session_id
        self._opened_at = time.monotonic()
        self.set_nodelay(True)
        self.tunnels.add(self)
        TUNNELS_OPEN.inc()
        via = f" via ssh {target.ssh}" if target.route == "ssh" else ""
        log.info("tunnel open: session %s to %s:%d%s", self.session_id, target.host, target.port, via)
        # Held so the task is not garbage-collected mid-relay (the loop keeps only weak references).
        self._pump = asyncio.create_task(self._relay_desktop_to_client(upstream))

    # -- relaying --------------------------------------------------------------------------------

    async def _relay_desktop_to_client(self, upstream: IOStream) -> None:
        try:
            while True:
                chunk = await upstream.read_bytes(READ_CHUNK, partial=True)
                # Awaiting the write is the backpressure: no further read until the browser took it.
                await self.write_message(chunk, binary=True)
                self._bytes_to_client += len(chunk)
                _TO_CLIENT.inc(len(chunk))
        except StreamClosedError:
            self.end(CLOSE_NORMAL, "desktop closed the connection")
        except WebSocketClosedError:
            self.end(CLOSE_NORMAL, "browser closed the connection")
        except Exception:
            # Nobody awaits this task: without this the tunnel would stay half open and silent.
            log.exception("console relay of session %s failed", self.session_id)
            self.end(CLOSE_INTERNAL_ERROR, "console relay failed")

    async def on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            # RFB is a byte stream; a text frame means the peer is not a VNC client.
            self.end(CLOSE_UNSUPPORTED_DATA, "binary messages only")
            return
        if self.upstream is None or self._ended:
            return
        try:
            # Tornado reads the next frame only after this coroutine returns, so awaiting the
            # desktop's socket keeps a fast browser from queueing input in the gateway.
            await self.upstream.write(message)
        except StreamClosedError:
            self.end(CLOSE_NORMAL, "desktop closed the connection")
            return
        self._bytes_to_desktop += len(message)
        _TO_DESKTOP.inc(len(message))
        self._note_input(message)

    def _note_input(self, message: bytes) -> None:
        """Record the user's last input for the pool's idle timeout, at most every few seconds.

        noVNC sends one RFB message per frame; only key and pointer events count as input, since
        the framebuffer update requests it sends all the time would keep any session busy.
        """
        now = time.monotonic()
        if message[:1] not in INPUT_MESSAGE_TYPES or now - self._input_recorded_at < INPUT_RECORD_INTERVAL_S:
            return
        self._input_recorded_at = now
        # Held so the task is not garbage-collected; the write runs on the database's executor.
        self._input_write = asyncio.create_task(self._record_input())

    async def _record_input(self) -> None:
        try:
            await self.db.run(partial(record_input, session_id=self.session_id))
        except SQLAlchemyError:
            log.warning("could not record input time of session %s", self.session_id)

    # -- closing ---------------------------------------------------------------------------------

    def end(self, code: int, reason: str) -> None:
        """Close both sides of the tunnel; safe to call more than once."""
        self.close(code, close_reason(reason))
        self._teardown(reason)

    def on_close(self) -> None:
        self._client_gone = True
        self._teardown("browser closed the connection")
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _teardown(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        if self.upstream is None:
            return
        self.upstream.close()
        self.tunnels.discard(self)
        TUNNELS_OPEN.dec()
        self._log_closed(reason)

    def _log_closed(self, reason: str) -> None:
        assert self.target is not None
        log.info(
            "tunnel closed: session %s to %s:%d, %s; %d bytes to desktop, %d bytes to client, %.1f s",
            self.session_id,
            self.target.host,
            self.target.port,
            reason,
            self._bytes_to_desktop,
            self._bytes_to_client,
            time.monotonic() - self._opened_at,
        )
