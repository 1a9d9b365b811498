"""The console relay: one browser WebSocket (noVNC) to one desktop's VNC (RFB) TCP port.

The token's route says how the display is reached: "direct" TCP, or "ssh", a channel through the
host's sshd to the VNC port on its loopback (gateway/ssh_channel.py). Either way the relay reads
and writes one IOStream.

A tunnel opens only with a console token, consumed once through the shared database. A desktop with
a VNC password (every desktop the broker made since credential injection) is then logged in to by the
gateway itself (gateway/vnc_login.py); the browser gets an RFB handshake with security type None from
the gateway and the desktop's ServerInit, and every message after that is framed (gateway/rfb.py) so
the console policy (clipboard) and the message size limit apply. A desktop without a password (a row
from before) keeps the plain byte relay.

Either way data flows with backpressure: each side waits for its write to drain before reading
more, so a slow browser slows the desktop's stream instead of growing a buffer in the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import mmap
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol

from broker.db import Database, database_unavailable
from broker.db.models import AuditEvent, DesktopSession, utcnow
from broker.db.tokens import ConsoleTarget, TokenRefused, mask
from broker.db.vnc_passwords import SealError, VncPasswordBox
from gateway import rfb, vnc_login, wire, ws_frames
from gateway.claims import TokenClaims
from gateway.clipboard import TO_CLIENT, TO_DESKTOP, ClipboardEvent, ClipboardFilter
from gateway.config import GatewaySettings
from gateway.recorder import Recorder, RecordingFailed, RecordingService
from gateway.ssh_channel import SshChannels, SshRouteError
from monitoring import logs
from monitoring.metrics import (
    BYTES_RELAYED,
    CLIPBOARD_TRANSFERS_STOPPED,
    TUNNELS_OPEN,
    TUNNELS_REFUSED,
    Direction,
    RecordingFailure,
    TunnelRefusal,
)

log = logging.getLogger(__name__)

# Large reads from the desktop: a framebuffer update is hundreds of KB, and every read and every WebSocket
# frame is a system call and a Python round through the loop (vdi bench tunnel: 64 KB reads halved the
# throughput).
READ_CHUNK = 1 << 20

# Browser frames at least this large are received straight into a buffer of their size.
LARGE_FRAME = 64 * 1024
# A read this small means the desktop's socket was drained: the burst is over, and pages of the read
# buffer past this are given back to the system until the next one.
QUIET_READ = 64 * 1024

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

_RFB_REFUSALS = {
    "malformed": TunnelRefusal.RFB_MALFORMED,
    "oversized": TunnelRefusal.RFB_OVERSIZED,
    "unsupported": TunnelRefusal.RFB_UNSUPPORTED,
    "auth": TunnelRefusal.DESKTOP_AUTH,
}
_CLIPBOARD_DIRECTIONS = {TO_DESKTOP: Direction.CLIENT_TO_DESKTOP, TO_CLIENT: Direction.DESKTOP_TO_CLIENT}
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


def request_id_from_query(uri: str) -> str | None:
    """The request id the broker put in the gateway URL (`rid`), when it is one."""
    values = parse_qs(urlsplit(uri).query).get("rid", [])
    return values[0] if values and logs.valid_request_id(values[0]) else None


def close_reason(text: str) -> str:
    """A close reason fits a control frame: at most 123 bytes of UTF-8 (RFC 6455 section 5.5)."""
    return text.encode("utf-8")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


async def connect_display(host: str, port: int, timeout_s: float) -> IOStream:
    """A stream to the desktop's display. An address (what the broker puts in tokens) is connected to
    directly; Tornado's TCPClient resolves every name on a worker thread first, a thread hop per tunnel
    (vdi bench tunnel, new tunnels)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return await TCPClient().connect(host, port, timeout=timeout_s)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return IOStream(sock)


class ReadBuffer:
    """The desktop side's read buffer of one tunnel: anonymous memory, so an idle tunnel holds no pages
    of it, and a tunnel whose desktop went quiet after a burst gives back what the burst touched."""

    def __init__(self, size: int) -> None:
        self._memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self._memory)
        self._touched = 0

    def used(self, size: int) -> None:
        """`size` bytes were read into the buffer and are no longer referenced."""
        self._touched = max(self._touched, size)
        if size <= QUIET_READ < self._touched:
            self._memory.madvise(mmap.MADV_DONTNEED, QUIET_READ, len(self._memory) - QUIET_READ)
            self._touched = QUIET_READ


async def _read_frame_bytes(protocol: WebSocketProtocol, size: int) -> bytes:
    """Tornado's read of a part of a browser's frame, with large payloads received into one buffer of
    their size instead of 64 KB reads gathered and copied (Tornado checks the size against
    max_message_size before it asks for the payload)."""
    if size < LARGE_FRAME:
        data = await protocol.stream.read_bytes(size)
    else:
        buffer = bytearray(size)
        await protocol.stream.read_into(buffer)
        data = bytes(buffer)
    protocol._wire_bytes_in += size
    return data


class TunnelRegistry:
    """The open tunnels of one gateway process, by session id, so a session's consoles can be closed."""

    def __init__(self) -> None:
        self._by_session: dict[str, set[Console]] = {}
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

    def add(self, relay: Console) -> None:
        self._by_session.setdefault(relay.session_id, set()).add(relay)
        if self.on_add is not None:
            self.on_add()

    def discard(self, relay: Console) -> None:
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


def record_clipboard(db: Session, target: ConsoleTarget, event: ClipboardEvent) -> None:
    """Audit a blocked or cut clipboard transfer: who, which session and way, size and hash, never content."""
    detail = {
        "session": target.session_id,
        "direction": event.direction,
        "reason": event.reason,
        "size": event.size,
        "sha256": event.sha256,
    }
    db.add(
        AuditEvent(
            actor=target.username,
            action="console.clipboard",
            result=event.result,
            target=target.domain_name,
            detail=detail,
        )
    )


def record_recording(
    db: Session, target: ConsoleTarget, result: str, recording_id: str | None, reason: str | None
) -> None:
    """Audit a console recording starting, or failing to start or to go on (docs/recording.md)."""
    detail = {"session": target.session_id, "recording": recording_id, "mode": target.policy.recording}
    if reason:
        detail["reason"] = reason
    db.add(
        AuditEvent(
            actor=target.username,
            action="console.recording",
            result=result,
            target=target.domain_name,
            detail=detail,
        )
    )


def vnc_password_box(settings: GatewaySettings) -> VncPasswordBox | None:
    key = settings.vnc_password_key
    return VncPasswordBox(key.get_secret_value()) if key else None


class Console:
    """One console tunnel. The URL carries the token; the token decides the desktop.

    The opening (token, session limit, the desktop's connection and login, the recording's start, each
    refusal with its close code) and the relaying are the same whichever server upgraded the browser's
    WebSocket: Tornado's (ConsoleRelay) or the gateway's own on plain listeners (gateway/upgrade.py).
    Subclasses say how the browser's side is written to and closed while it is not on the wire, and how
    the sockets get there.
    """

    def _setup(
        self,
        settings: GatewaySettings,
        db: Database,
        tunnels: TunnelRegistry,
        ssh_channels: SshChannels,
        vnc_passwords: VncPasswordBox | None = None,
        recordings: RecordingService | None = None,
        claims: TokenClaims | None = None,
    ) -> None:
        self.gateway = settings
        # The gateway's (claims gathered across its consoles: gateway/claims.py), or one of its own.
        self.claims = claims if claims is not None else TokenClaims(db)
        self.recordings = recordings
        self._recorder: Recorder | None = None
        self.vnc_passwords = vnc_passwords
        self.db = db
        self.tunnels = tunnels
        self.ssh_channels = ssh_channels
        self.session_id = ""
        self.target: ConsoleTarget | None = None
        self.upstream: IOStream | None = None
        self._client_gone = False
        self._ended = False
        # Made only when someone waits for the close (an asyncio.Event costs every idle tunnel its deque).
        self._closed: asyncio.Future[None] | None = None
        self._opened_at = 0.0
        self._pump: asyncio.Task | None = None
        self._bytes_to_desktop = 0
        self._bytes_to_client = 0
        self._input_recorded_at = float("-inf")
        self._input_write: asyncio.Task | None = None
        # Credential-injected tunnels: the desktop's ServerInit, the browser's handshake while it runs
        # (with its deadline), then the framers of both directions.
        self._server_init: rfb.ServerInit | None = None
        self._handshake: rfb.BrowserHandshake | None = None
        self._handshake_deadline: object | None = None
        self._rfb: rfb.RfbSession | None = None
        self._side_tasks: set[asyncio.Task] = set()
        # Once the tunnel is open, its sockets driven by the loop's protocols (gateway/wire.py).
        self._wire: wire.Wire | None = None

    # -- what the server that upgraded the browser's WebSocket provides ---------------------------

    def _close_browser(self, code: int | None, reason: str | None) -> None:
        """Close the browser's WebSocket while its socket is not on the wire."""
        raise NotImplementedError

    def _write_browser(self, message: bytes | str) -> None:
        """A whole message to the browser while its socket is not on the wire."""
        raise NotImplementedError

    def _browser_nodelay(self) -> None:
        raise NotImplementedError

    async def _take_sockets(self, upstream: IOStream) -> None:
        """Put both sides on the wire (_hand_to_wire) when they can go."""
        raise NotImplementedError

    def _start_pump(self) -> None:
        """Relay the desktop's stream to a browser that is not on the wire."""
        raise NotImplementedError

    async def _hand_to_wire(
        self,
        browser: socket.socket,
        browser_bytes: bytes,
        upstream: IOStream,
        *,
        max_message: int,
        ping_interval_s: float,
        ping_timeout_s: float,
    ) -> None:
        """Both sockets to the loop's protocols (the browser's with the bytes read past its upgrade)."""
        desktop, desktop_bytes = wire.take_socket(upstream)
        self._wire = wire.Wire(
            self,
            ReadBuffer(READ_CHUNK),
            max_message=max_message,
            ping_interval_s=ping_interval_s,
            ping_timeout_s=ping_timeout_s,
        )
        await self._wire.start(browser, browser_bytes, desktop, desktop_bytes)

    # -- opening ---------------------------------------------------------------------------------

    async def _open_tunnel(self, uri: str) -> None:
        """Token, session limit, the desktop's connection and login, the recording, then the relay; a
        refusal closes the browser's WebSocket saying why."""
        target = await self._consume_token(token_from_query(uri))
        if target is None or self._client_gone:
            return
        logs.bind(user=target.username or None, session=target.session_id)
        if not self.tunnels.reserve(target.session_id, self.gateway.max_tunnels_per_session):
            self._refuse_over_limit(target)
            return
        try:
            upstream = await self._connect(target)
            if upstream is None:
                return
            if not await self._log_in(target, upstream) or self._client_gone:
                upstream.close()
                return
            if not await self._start_recording(target):
                upstream.close()
                return
            self._start_tunnel(target, upstream)
        finally:
            # Released in the same step as the tunnel joins the registry (no await between), so a second
            # console of the session never counts this one twice.
            self.tunnels.release(target.session_id)
        await self._start_relay(upstream)

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
            return await self.claims.consume(token)
        except TokenRefused as exc:
            TUNNELS_REFUSED.labels(reason=TunnelRefusal.TOKEN.value).inc()
            log.warning("console refused: %s (token %s)", exc.reason, mask(token) or "missing")
            self.close(CLOSE_POLICY_VIOLATION, exc.reason)
        except SQLAlchemyError as exc:
            if database_unavailable(exc):  # degraded mode: one line, open tunnels carry on (docs/database.md)
                log.warning("console refused: database unavailable (token %s)", mask(token))
            else:
                # Statement parameters in the error hold the token's hash, never the token itself.
                log.exception("console refused: database unavailable (token %s)", mask(token))
            self.close(CLOSE_INTERNAL_ERROR, "console service unavailable")
        return None

    async def _connect(self, target: ConsoleTarget) -> IOStream | None:
        if target.route == "ssh":
            return await self._connect_ssh(target)
        try:
            stream = await connect_display(target.host, target.port, self.gateway.connect_timeout_s)
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

    # -- logging in to the desktop ---------------------------------------------------------------

    async def _log_in(self, target: ConsoleTarget, upstream: IOStream) -> bool:
        """With a sealed password, the RFB handshake with the desktop; False when refused (and closed)."""
        if target.vnc_password_sealed is None:
            return True  # a desktop from before credential injection: byte relay
        password = self._vnc_password(target)
        if password is None:
            return False
        try:
            # A timeout scope, not wait_for: that made a task of the login (a task per tunnel).
            async with asyncio.timeout(self.gateway.rfb_handshake_timeout_s):
                self._server_init = await vnc_login.log_in(upstream, password)
        except rfb.RfbError as exc:
            self._refuse_desktop(target, _RFB_REFUSALS[exc.kind], exc.reason)
            return False
        except TimeoutError:
            self._refuse_desktop(
                target, TunnelRefusal.RFB_TIMEOUT, "desktop did not finish the RFB handshake"
            )
            return False
        except StreamClosedError:
            self._refuse_desktop(target, TunnelRefusal.UPSTREAM, "desktop closed the RFB handshake")
            return False
        return True

    def _vnc_password(self, target: ConsoleTarget) -> str | None:
        try:
            if self.vnc_passwords is None:
                raise SealError("gateway.vnc_password_key is not set")
            return self.vnc_passwords.open(target.domain_name, target.vnc_password_sealed or "")
        except SealError as exc:
            TUNNELS_REFUSED.labels(reason=TunnelRefusal.NO_KEY.value).inc()
            log.error("console refused: session %s: desktop has a VNC password: %s", target.session_id, exc)
            self.close(CLOSE_INTERNAL_ERROR, "console service unavailable")
            return None

    def _refuse_desktop(self, target: ConsoleTarget, refusal: TunnelRefusal, reason: str) -> None:
        TUNNELS_REFUSED.labels(reason=refusal.value).inc()
        log.warning(
            "console refused: desktop display %s:%d of session %s: %s",
            target.host,
            target.port,
            target.session_id,
            reason,
        )
        # The browser learns only that the display failed; which way is for the log.
        self.close(CLOSE_INTERNAL_ERROR, "desktop display unreachable")

    # -- recording (gateway/recorder.py) ---------------------------------------------------------

    async def _start_recording(self, target: ConsoleTarget) -> bool:
        """Start the pool's recording; False when the console must not open without one (and closed)."""
        mode = target.policy.recording
        if mode not in ("on", "required") or self.recordings is None:
            return True
        server_init = self._server_init.encode() if self._server_init is not None else None
        try:
            recorder = await self.recordings.start(
                target, server_init, partial(self._recording_failed, target)
            )
        except RecordingFailed as exc:
            return self._recording_refused(target, exc)
        if self._client_gone or self._ended:
            recorder.close()
            return False
        self._recorder = recorder
        log.info("recording session %s as %s", target.session_id, recorder.id)
        self._spawn(self._audit_recording(target, "started", recorder.id, None))
        return True

    def _recording_refused(self, target: ConsoleTarget, exc: RecordingFailed) -> bool:
        self._spawn(self._audit_recording(target, "failed", None, exc.reason.value))
        if target.policy.recording != "required":
            log.warning("session %s is not recorded: %s: %s", target.session_id, exc.reason.value, exc)
            return True
        TUNNELS_REFUSED.labels(reason=TunnelRefusal.RECORDING.value).inc()
        log.warning(
            "console refused: session %s must be recorded: %s: %s", target.session_id, exc.reason.value, exc
        )
        self.close(CLOSE_INTERNAL_ERROR, "console recording unavailable")
        return False

    def _recording_failed(self, target: ConsoleTarget, reason: RecordingFailure) -> None:
        """The recording stopped mid-way (counted and logged by the recorder)."""
        recording_id = self._recorder.id if self._recorder is not None else None
        self._spawn(self._audit_recording(target, "failed", recording_id, reason.value))
        if target.policy.recording == "required" and not self._ended:
            TUNNELS_REFUSED.labels(reason=TunnelRefusal.RECORDING.value).inc()
            self.end(CLOSE_INTERNAL_ERROR, "console recording failed")

    async def _audit_recording(
        self, target: ConsoleTarget, result: str, recording_id: str | None, reason: str | None
    ) -> None:
        try:
            await self.db.run(
                partial(
                    record_recording, target=target, result=result, recording_id=recording_id, reason=reason
                )
            )
        except SQLAlchemyError:
            log.warning("could not audit the recording of session %s", target.session_id)

    def _start_tunnel(self, target: ConsoleTarget, upstream: IOStream) -> None:
        self.target, self.upstream, self.session_id = target, upstream, target.session_id
        self._opened_at = time.monotonic()
        self._browser_nodelay()
        self.tunnels.add(self)
        TUNNELS_OPEN.inc()
        via = f" via ssh {target.ssh}" if target.route == "ssh" else ""
        log.info("tunnel open: session %s to %s:%d%s", self.session_id, target.host, target.port, via)

    async def _start_relay(self, upstream: IOStream) -> None:
        if self.gateway.protocol_relay:
            try:
                await self._take_sockets(upstream)
            except OSError as exc:
                log.warning(
                    "console closed: session %s: its sockets could not be handed to the event loop: %s",
                    self.session_id,
                    exc,
                )
                self.end(CLOSE_INTERNAL_ERROR, "console relay failed")
                return
        if self._ended:
            return
        if self._server_init is not None:
            self._start_browser_handshake(self._server_init)
            return
        self._start_desktop_reads()

    def _start_desktop_reads(self) -> None:
        if self._wire is not None:
            self._wire.start_desktop()
            return
        self._start_pump()

    def _send_browser(self, message: bytes | str) -> None:
        """A whole message to the browser (binary for bytes); nothing once it is closing."""
        if self._wire is not None:
            self._wire.send(message)
            return
        self._write_browser(message)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self._wire is not None:
            self._wire.close(code, reason or "")
            return
        self._close_browser(code, reason)

    # -- the browser's RFB handshake (credential-injected tunnels) --------------------------------

    def _start_browser_handshake(self, server_init: rfb.ServerInit) -> None:
        self._handshake = rfb.BrowserHandshake(server_init)
        self._handshake_deadline = IOLoop.current().call_later(
            self.gateway.rfb_handshake_timeout_s, self._browser_handshake_expired
        )
        self._send_browser(self._handshake.banner())

    def _browser_handshake_expired(self) -> None:
        if self._handshake is None or self._ended:
            return
        TUNNELS_REFUSED.labels(reason=TunnelRefusal.RFB_TIMEOUT.value).inc()
        log.warning("console closed: session %s: browser did not finish the RFB handshake", self.session_id)
        self.end(CLOSE_POLICY_VIOLATION, "RFB handshake timed out")

    def _advance_browser_handshake(self, message: bytes) -> Awaitable[None] | None:
        """The browser's handshake message; once done, the relay starts (an awaitable while the first
        client messages, sent with the ClientInit, wait for the desktop's socket)."""
        handshake = self._handshake
        assert handshake is not None and self.target is not None and self.upstream is not None
        try:
            reply = b"".join(handshake.feed(message))
        except rfb.RfbError as exc:
            self._close_on_rfb_error(exc, "browser")
            return None
        if reply:
            self._send_browser(reply)
        if not handshake.done:
            return None
        self._handshake = None
        self._cancel_handshake_deadline()
        self._rfb = self._framers(handshake)
        self._start_desktop_reads()
        leftover = handshake.leftover()
        return self._to_desktop(leftover) if leftover else None

    def _framers(self, handshake: rfb.BrowserHandshake) -> rfb.RfbSession:
        assert self.target is not None and self._server_init is not None
        policy = self.target.policy
        return rfb.RfbSession(
            self._server_init,
            max_client_message=self.gateway.max_message_bytes,
            max_server_cut_text=self.gateway.max_message_bytes,
            to_desktop=ClipboardFilter(policy, TO_DESKTOP, self._clipboard_stopped).decide,
            to_client=ClipboardFilter(policy, TO_CLIENT, self._clipboard_stopped).decide,
        )

    def _cancel_handshake_deadline(self) -> None:
        if self._handshake_deadline is not None:
            IOLoop.current().remove_timeout(self._handshake_deadline)
            self._handshake_deadline = None

    def _close_on_rfb_error(self, exc: rfb.RfbError, side: str) -> None:
        """A message the gateway cannot or will not relay ends the tunnel, saying why (RFC 6143 framing)."""
        TUNNELS_REFUSED.labels(reason=_RFB_REFUSALS[exc.kind].value).inc()
        log.warning("console closed: session %s: the %s broke RFB: %s", self.session_id, side, exc.reason)
        code = CLOSE_POLICY_VIOLATION if side == "browser" else CLOSE_INTERNAL_ERROR
        self.end(code, exc.reason if side == "browser" else "desktop display protocol error")

    # -- clipboard policy ------------------------------------------------------------------------

    def _clipboard_stopped(self, event: ClipboardEvent) -> None:
        assert self.target is not None
        direction = _CLIPBOARD_DIRECTIONS[event.direction].value
        CLIPBOARD_TRANSFERS_STOPPED.labels(direction=direction, result=event.result).inc()
        log.info(
            "clipboard %s %s (%s): session %s, %d bytes, sha256 %s",
            event.direction,
            event.result,
            event.reason,
            self.session_id,
            event.size,
            event.sha256,
        )
        self._spawn(self._audit_clipboard(self.target, event))
        self._notice({"notice": "clipboard", "direction": event.direction, "result": event.result})

    def _notice(self, notice: dict) -> None:
        """A text frame for the console page; noVNC reads binary frames only and ignores it."""
        self._send_browser(json.dumps(notice))

    async def _audit_clipboard(self, target: ConsoleTarget, event: ClipboardEvent) -> None:
        try:
            await self.db.run(partial(record_clipboard, target=target, event=event))
        except SQLAlchemyError:
            log.warning("could not audit a clipboard transfer of session %s", target.session_id)

    def _spawn(self, coroutine) -> None:
        # Held until done: the loop keeps only weak references to tasks.
        task = asyncio.create_task(coroutine)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # -- relaying --------------------------------------------------------------------------------

    def relayed_to_client(self, size: int) -> None:
        self._bytes_to_client += size
        _TO_CLIENT.inc(size)

    def desktop_error(self, exc: Exception) -> None:
        """The desktop's stream could not be relayed (the wire's reads; the pump handles its own)."""
        if isinstance(exc, rfb.RfbError):
            self._close_on_rfb_error(exc, "desktop")
            return
        log.error("console relay of session %s failed", self.session_id, exc_info=exc)
        self.end(CLOSE_INTERNAL_ERROR, "console relay failed")

    def desktop_closed(self) -> None:
        self.end(CLOSE_NORMAL, "desktop closed the connection")

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        # Not a coroutine: Tornado makes a task of each coroutine a handler returns, and waits for it,
        # before it reads the next frame. Most messages are written to the desktop at once, so they
        # return None; only a write the desktop's socket cannot take yet is waited for (vdi bench tunnel).
        if isinstance(message, str):
            # RFB is a byte stream; a text frame means the peer is not a VNC client.
            self.end(CLOSE_UNSUPPORTED_DATA, "binary messages only")
            return None
        if self.upstream is None or self._ended:
            return None
        if self._handshake is not None:
            return self._advance_browser_handshake(message)
        return self._to_desktop(message)

    def _to_desktop(self, message: bytes) -> Awaitable[None] | None:
        """Frame and write the browser's message; an awaitable while the desktop has not taken it all."""
        assert self.upstream is not None
        pieces: list[bytes | memoryview]
        if self._rfb is None:
            pieces, is_input = [message], message[:1] in INPUT_MESSAGE_TYPES
        else:
            try:
                pieces = self._rfb.client.feed(message)
            except rfb.RfbError as exc:
                self._close_on_rfb_error(exc, "browser")
                return None
            is_input, self._rfb.client.input_seen = self._rfb.client.input_seen, False
        size = sum(map(len, pieces))
        if self._wire is not None:
            self._wire.write_desktop(pieces)
            self._relayed_to_desktop(size, is_input)
            return None
        try:
            sent = ws_frames.write_pieces(self.upstream, pieces) if pieces else None
        except StreamClosedError:
            self.end(CLOSE_NORMAL, "desktop closed the connection")
            return None
        if sent is None:
            self._relayed_to_desktop(size, is_input)
            return None
        # Tornado reads the next frame only after this is done, so waiting for the desktop's socket
        # keeps a fast browser from queueing input in the gateway.
        return self._drain_to_desktop(sent, size, is_input)

    async def _drain_to_desktop(self, sent: Awaitable[None], size: int, is_input: bool) -> None:
        try:
            await sent
        except StreamClosedError:
            self.end(CLOSE_NORMAL, "desktop closed the connection")
            return
        self._relayed_to_desktop(size, is_input)

    def _relayed_to_desktop(self, size: int, is_input: bool) -> None:
        self._bytes_to_desktop += size
        _TO_DESKTOP.inc(size)
        self._note_input(is_input)

    def _note_input(self, is_input: bool) -> None:
        """Record the user's last input for the pool's idle timeout, at most every few seconds.

        Only key and pointer events count as input, since the framebuffer update requests noVNC
        sends all the time would keep any session busy. (The byte relay looks at the first byte of
        each WebSocket message: noVNC sends one RFB message per frame.)
        """
        now = time.monotonic()
        if not is_input or now - self._input_recorded_at < INPUT_RECORD_INTERVAL_S:
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

    def browser_closed(self) -> None:
        """The browser's socket is gone (the wire's; Tornado calls on_close for its own)."""
        self.on_close()

    def on_close(self) -> None:
        self._client_gone = True
        self._teardown("browser closed the connection")
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        if self._client_gone:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed)

    def _teardown(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        self._cancel_handshake_deadline()
        if self._recorder is not None:
            self._recorder.close()
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


class ConsoleRelay(Console, WebSocketHandler):
    """A console whose WebSocket Tornado upgraded: served over TLS by the gateway itself, or with
    gateway.protocol_relay off; then moved to the wire when both sides are plain sockets."""

    def initialize(self, **kwargs) -> None:
        self._setup(**kwargs)

    # -- handshake -------------------------------------------------------------------------------

    def prepare(self) -> None:
        # The broker request that issued the token named itself in the URL (`rid`, docs/logging.md); this
        # tunnel's lines carry it. Bound here, before the upgrade, so the tunnel's task and its pumps inherit it.
        request_id = request_id_from_query(self.request.uri or "")
        logs.bind(request_id=request_id or logs.new_request_id(), user=None, session=None)

    def check_origin(self, origin: str) -> bool:
        # The token alone does not stop cross-site WebSocket hijacking: any page the user visits
        # could open a socket with a token it phished, so browsers must come from the portal.
        if origin_allowed(origin, self.gateway.allowed_origins):
            return True
        TUNNELS_REFUSED.labels(reason=TunnelRefusal.ORIGIN.value).inc()
        log.warning("console refused: origin %r is not allowed", origin)
        return False

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        if protocol is not None and hasattr(protocol, "_read_bytes"):
            protocol._read_bytes = partial(_read_frame_bytes, protocol)
        return protocol

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        # noVNC before 1.0 insists on the "binary" subprotocol; current noVNC offers none.
        return "binary" if "binary" in subprotocols else None

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Tornado's own version logs the request URI, which carries the token.
        log.error("uncaught exception in console relay %s", self.request.path, exc_info=(typ, value, tb))

    async def open(self, *args: str, **kwargs: str) -> None:
        await self._open_tunnel(self.request.uri or "")
        if self._wire is not None:
            # Tornado reads the browser's frames once open() returns: with the socket taken, not before
            # the tunnel is over (it then finds the stream closed and calls on_close, which is harmless).
            await self._wire.done

    def _close_browser(self, code: int | None, reason: str | None) -> None:
        WebSocketHandler.close(self, code, reason)

    def _write_browser(self, message: bytes | str) -> None:
        with contextlib.suppress(WebSocketClosedError):
            self.write_message(message, binary=isinstance(message, bytes))

    def _browser_nodelay(self) -> None:
        self.set_nodelay(True)

    def _start_pump(self) -> None:
        # Held so the task is not garbage-collected mid-relay (the loop keeps only weak references).
        assert self.upstream is not None
        self._pump = asyncio.create_task(self._relay_desktop_to_client(self.upstream))

    async def _take_sockets(self, upstream: IOStream) -> None:
        """Move both sides from Tornado's streams to the loop's protocols (gateway/wire.py), when both are
        plain sockets with nothing queued; TLS browsers stay on Tornado's stream."""
        connection = self.ws_connection
        if connection is None or connection.stream is None:
            return
        if not (wire.can_take(connection.stream) and wire.can_take(upstream)):
            return
        pinging = getattr(connection, "_ping_coroutine", None)
        if pinging is not None:
            pinging.cancel()  # the wire pings on the same schedule
        browser, browser_bytes = wire.take_socket(connection.stream)
        await self._hand_to_wire(
            browser,
            browser_bytes,
            upstream,
            max_message=self.max_message_size,
            ping_interval_s=self.ping_interval or 0.0,
            ping_timeout_s=self.ping_timeout or 0.0,
        )

    async def _relay_desktop_to_client(self, upstream: IOStream) -> None:
        try:
            await self._pump_desktop_to_client(upstream)
        except rfb.RfbError as exc:
            self._close_on_rfb_error(exc, "desktop")
        except StreamClosedError:
            self.end(CLOSE_NORMAL, "desktop closed the connection")
        except WebSocketClosedError:
            self.end(CLOSE_NORMAL, "browser closed the connection")
        except Exception:
            # Nobody awaits this task: without this the tunnel would stay half open and silent.
            log.exception("console relay of session %s failed", self.session_id)
            self.end(CLOSE_INTERNAL_ERROR, "console relay failed")

    async def _pump_desktop_to_client(self, upstream: IOStream) -> None:
        """Reads go straight into one buffer of the tunnel, and frames go out as slices of it: no byte
        of pixel data is copied in the gateway (vdi bench tunnel). The buffer is anonymous memory, so
        a tunnel costs the pages it has used, not READ_CHUNK, and the relay gives them back when the
        desktop goes quiet."""
        buffer = ReadBuffer(READ_CHUNK)
        while True:
            size = await upstream.read_into(buffer.view, partial=True)
            data = buffer.view[:size]
            pieces = data if self._rfb is None else self._rfb.server.feed(data)
            if not pieces:
                buffer.used(size)
                continue
            if self._rfb is None:
                pieces = [pieces]
            if self._recorder is not None:
                # A copy (the buffer is reused), a stamp and a queue put: the writer thread does the rest.
                self._recorder.server(b"".join(pieces))
            sent = ws_frames.send_binary(self.ws_connection, pieces)
            if sent is not None:
                # Awaiting the write is the backpressure (and the buffer is reused only after it).
                try:
                    await sent
                except StreamClosedError:
                    raise WebSocketClosedError() from None
            self.relayed_to_client(sum(map(len, pieces)))
            buffer.used(size)
