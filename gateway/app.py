"""The gateway process: console WebSocket, health and metrics, and a clean shutdown.

It needs only the database: tunnels keep relaying while the broker restarts or is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import resource
import signal
import ssl
from collections.abc import Callable

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado.httpserver import HTTPServer
from tornado.log import access_log
from tornado.netutil import bind_sockets

from broker.db import Database, check_reachable
from gateway.claims import TokenClaims
from gateway.config import GatewayConfig, GatewaySettings
from gateway.recorder import RecordingService
from gateway.relay import ConsoleRelay, TunnelRegistry, vnc_password_box
from gateway.session_watch import SessionWatch
from gateway.ssh_channel import SshChannels
from gateway.upgrade import ConsoleUpgrades, GatewayServer
from monitoring.access import scrape_allowed

log = logging.getLogger(__name__)

# stock websockify and older noVNC builds connect to /websockify; keep them working unchanged.
WEBSOCKIFY_PATH = "/websockify"
# A browser that vanished without a FIN (lid closed, NAT entry dropped) would otherwise hold a
# desktop's VNC connection forever; pings find it within a minute.
PING_INTERVAL_S = 30
PING_TIMEOUT_S = 30
SHUTDOWN_GRACE_S = 5.0
MAX_UPGRADE_BODY_BYTES = 4096
# Request heads up to this are read (Tornado's default); past it the gateway answers 431.
MAX_HEAD_BYTES = 65536
# The largest WebSocket message from a browser (Tornado's default); RFB's own limit is gateway.max_message_bytes.
MAX_WEBSOCKET_MESSAGE_BYTES = 10 * 1024 * 1024
# Open files the gateway asks for at start: 10,000 idle tunnels in one process (docs/gateway.md).
OPEN_FILES_WANTED = 65536
# Descriptors besides tunnels: listening sockets, the database, the event loop, logs.
OPEN_FILES_SPARE = 64


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log without the query string: console URLs carry the token there."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        request.path,
        request.remote_ip,
        1000.0 * request.request_time(),
    )


class JsonHandler(tornado.web.RequestHandler):
    """Errors as JSON, and exception logs that name the path only (never the query)."""

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish({"error": self._reason, "status": status_code})

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, tornado.web.HTTPError):
            log.warning("%d %s %s: %s", value.status_code, self.request.method, self.request.path, value)
            return
        log.error(
            "uncaught exception in %s %s", self.request.method, self.request.path, exc_info=(typ, value, tb)
        )


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


class HealthHandler(JsonHandler):
    def get(self) -> None:
        self.finish({"status": "ok", "tunnels_open": len(self.application.tunnels)})


class MetricsHandler(JsonHandler):
    def prepare(self) -> None:
        settings: GatewaySettings = self.application.settings["gateway"]
        token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        authorization = self.request.headers.get("Authorization")
        if not scrape_allowed(self.request.remote_ip or "", authorization, token, settings.metrics_networks):
            raise tornado.web.HTTPError(403)

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())


class GatewayApplication(tornado.web.Application):
    """The Tornado application plus the registry of its open tunnels."""

    def __init__(self, config: GatewayConfig, db: Database) -> None:
        self.tunnels = TunnelRegistry()
        self.session_watch = SessionWatch(self.tunnels, db)
        self.tunnels.on_add = self.session_watch.ensure_started
        self.ssh_channels = SshChannels(config.gateway)
        self.recordings = RecordingService(config.gateway)
        self.relay_args = relay_args = {
            "settings": config.gateway,
            "db": db,
            "tunnels": self.tunnels,
            "ssh_channels": self.ssh_channels,
            "vnc_passwords": vnc_password_box(config.gateway),
            "recordings": self.recordings,
            "claims": TokenClaims(db),
        }
        self.console_paths = console_paths = list(dict.fromkeys([config.gateway.path, WEBSOCKIFY_PATH]))
        routes = [(re.escape(path), ConsoleRelay, relay_args) for path in console_paths]
        routes += [(r"/healthz", HealthHandler), (r"/metrics", MetricsHandler)]
        super().__init__(
            routes,
            log_function=log_request,
            default_handler_class=NotFoundHandler,
            websocket_ping_interval=PING_INTERVAL_S,
            websocket_ping_timeout=PING_TIMEOUT_S,
            websocket_max_message_size=MAX_WEBSOCKET_MESSAGE_BYTES,
            gateway=config.gateway,
        )

    def close_session(self, session_id: str, reason: str) -> int:
        """Close the session's tunnels (logoff, revoke); returns how many were open."""
        return self.tunnels.close_session(session_id, reason)


def http_server(app: GatewayApplication, settings: GatewaySettings) -> HTTPServer:
    """The gateway's HTTP server: TLS when configured, and short limits before the WebSocket upgrade. On
    plain listeners with the protocol relay, consoles' upgrades are the gateway's own (gateway/upgrade.py)."""
    tls = tls_context(settings)
    upgrades = None
    if tls is None and settings.protocol_relay:
        upgrades = ConsoleUpgrades(
            app, handshake_timeout_s=settings.handshake_timeout_s, max_head_bytes=MAX_HEAD_BYTES
        )
    return GatewayServer(
        app,
        ssl_options=tls,
        # Tornado's default waits an hour for the upgrade request; a WebSocket upgrade has no body.
        idle_connection_timeout=settings.handshake_timeout_s,
        max_body_size=MAX_UPGRADE_BODY_BYTES,
        max_header_size=MAX_HEAD_BYTES,
        upgrades=upgrades,
    )


def make_app(config: GatewayConfig, db: Database) -> GatewayApplication:
    if not config.gateway.allowed_origins:
        log.warning("gateway.allowed_origins is empty: every browser will be refused")
    return GatewayApplication(config, db)


def run(config: GatewayConfig) -> None:
    """Serve until SIGTERM or SIGINT, then close tunnels and stop listening.

    DatabaseUnreachable (naming database.url) if the database cannot be reached at start; once running,
    open tunnels need no database and new ones are refused until it is back (docs/database.md).
    """
    check_reachable(config.database.url)
    open_files = raise_open_files_limit()
    if open_files < OPEN_FILES_WANTED:
        # Two sockets per tunnel: past this the next console is refused with "Too many open files".
        log.warning(
            "open files limited to %d (hard limit): room for about %d tunnels; raise it (LimitNOFILE)",
            open_files,
            (open_files - OPEN_FILES_SPARE) // 2,
        )
    with asyncio.Runner(loop_factory=event_loop_factory(config.gateway)) as runner:
        runner.run(serve(config))


def event_loop_factory(settings: GatewaySettings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when configured and installed (vdi bench tunnel: see docs/gateway.md), else asyncio's."""
    if not settings.uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        log.info("gateway.uvloop is on but uvloop is not installed: running on asyncio's event loop")
        return None
    return uvloop.new_event_loop


# Allocations between young-generation collections (Python's default is 700). Each new tunnel allocates a
# few thousand objects (request, handler, streams, futures), so the default collects several times per
# tunnel; the collector's own share of the gateway's CPU was about a fifth (py-spy, vdi bench tunnel).
GC_YOUNG_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """Fewer collections, and none of them scanning what start-up made (modules, mappers, settings):
    those objects live as long as the process (gc.freeze)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve(config: GatewayConfig) -> None:
    db = Database(config.database)
    app = make_app(config, db)
    server = http_server(app, config.gateway)
    sockets = bind_sockets(config.gateway.port, config.gateway.listen_address)
    server.add_sockets(sockets)
    app.recordings.start_purge()
    tune_garbage_collector()
    stop = _stop_on_signals()
    log.info(
        "gateway listening on %s://%s:%d%s",
        "wss" if config.gateway.tls_cert else "ws",
        config.gateway.listen_address,
        sockets[0].getsockname()[1],
        config.gateway.path,
    )
    try:
        await stop.wait()
    finally:
        await shutdown(app, server, db)


def tls_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    """wss:// for portals served over https (a browser refuses ws:// from an https page as mixed content)."""
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def shutdown(app: GatewayApplication, server: HTTPServer, db: Database) -> None:
    log.info("gateway stopping: closing %d tunnel(s)", len(app.tunnels))
    server.stop()
    app.session_watch.stop()
    await app.tunnels.close_all("gateway shutting down", timeout_s=SHUTDOWN_GRACE_S)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), timeout=SHUTDOWN_GRACE_S)
    await app.ssh_channels.close()
    await app.recordings.stop()
    db.close()
    log.info("gateway stopped")


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> int:
    """Open files up to `wanted`: every tunnel holds two sockets (an SSH route a channel), so the usual
    soft limit of 1024 would refuse the 500th console. Past the hard limit only when privileged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    unlimited = hard == resource.RLIM_INFINITY
    for limits in ((wanted, hard if unlimited else max(hard, wanted)), (min(wanted, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
